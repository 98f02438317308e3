"""``effnet-kernels predict PATH... --out FILE``: batch inference over image files.

Inputs: files, folders (searched recursively for image files) and globs (``**`` recursive), in
the order given, each folder and glob sorted, duplicates dropped. A DataLoader (``--workers``)
reads each image with ``data.load_image`` (grayscale, RGBA, CMYK... converted to RGB) and
preprocesses it as the model expects (``convert.imagenet_preprocess`` at the model's
resolution: shorter side to res/0.875, centre crop, ImageNet normalisation). An unreadable file
is reported on stderr and in the summary line and skipped; it never stops the run.

Model: ``--model`` (default ``efficientnet_lite0``) with ``--weights FILE`` (an effnet_kernels
or efficientnet_pytorch state dict); without ``--weights`` only Lite0 has weights: the real
pretrained ones of the demo. It runs ``ek.optimize``'d (``--backend``, ``--device``,
``--dtype``), or INT8 (``--int8``: calibrated on the first ``--calib-images`` inputs, or loaded
from ``--int8-state``; ``--save-int8-state`` keeps a calibration).

Output (``--out``, by suffix), one row per readable image, in input order:
default top-``k`` classes (``--topk``) with probabilities; ``--embeddings`` the pooled
embedding; ``--features`` the feature maps at ``--out-indices`` (default 4, stride 32).
``.jsonl``: one JSON object per image; ``.csv``: one line per image (floats as 9 significant
digits, exact for float32); ``.npy`` (embeddings, or one feature map): one array, its rows'
paths in ``FILE.paths.txt``. Rows do not depend on the batch size: the embedding/feature
models are batch-invariant and the classifier runs row by row. They can differ in the last bits
with the number of CPU threads (``--threads``; the CPU kernels and oneDNN split some sums by
thread).

Many processes: under ``torchrun`` (``WORLD_SIZE`` > 1) each rank initialises
``torch.distributed`` (NCCL on CUDA, each rank on ``cuda:LOCAL_RANK``; gloo on the CPU), takes
every ``WORLD_SIZE``-th file, and rank 0 gathers the rows and writes the one output file, the
same as a single process would (with the same threads per process: torchrun sets
``OMP_NUM_THREADS=1``). Several nodes: the same command on each, e.g. ::

    torchrun --nnodes 2 --nproc-per-node 8 --node-rank $NODE --master-addr $HOST0 \
        --master-port 29500 -m effnet_kernels predict /data/images --out preds.jsonl

(the paths must be readable on every node; ``--out`` is written on node 0 by rank 0).
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm", ".pbm", ".jfif")
OUT_SUFFIXES = (".jsonl", ".csv", ".npy")
DEFAULT_MODEL = "efficientnet_lite0"


# ----------------------------------------------------------------------------- inputs
def find_images(paths: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """(image files, [(path, why)] for arguments that match nothing): files as given, folders
    walked recursively for ``IMAGE_SUFFIXES``, globs expanded; each folder/glob sorted."""
    files, missing, seen = [], [], set()

    def add(p):
        if p not in seen:
            seen.add(p)
            files.append(p)

    for p in paths:
        if os.path.isdir(p):
            found = sorted(os.path.join(d, f) for d, _, fs in os.walk(p) for f in fs
                           if f.lower().endswith(IMAGE_SUFFIXES))
            if not found:
                missing.append((p, "folder holds no image files"))
        elif os.path.exists(p):
            found = [p]
        elif glob.has_magic(p):
            found = sorted(f for f in glob.glob(p, recursive=True) if os.path.isfile(f))
            if not found:
                missing.append((p, "glob matches no file"))
        else:
            found = []
            missing.append((p, "no such file or folder"))
        for f in found:
            add(f)
    return files, missing


class ImageFiles(Dataset):
    """Item i: ``(i, preprocessed (3, size, size) float32 image or None, error or None)``."""

    def __init__(self, files: list[str], indices: list[int], size: int) -> None:
        self.files, self.indices, self.size = files, indices, size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        from .convert import imagenet_preprocess
        from .data import load_image

        i = self.indices[k]
        try:
            img = load_image(self.files[i])
            return i, imagenet_preprocess(img.permute(1, 2, 0), self.size)[0], None
        except Exception as e:  # noqa: BLE001  (any decoder failure: skip the file, go on)
            msg = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
            return i, None, (msg.splitlines() or ["unreadable"])[0]  # one line on stderr


def collate(items):
    """(indices, (n, 3, S, S) batch or None, [(index, error)]) from ``ImageFiles`` items."""
    ok = [(i, x) for i, x, err in items if err is None]
    bad = [(i, err) for i, _, err in items if err is not None]
    batch = torch.stack([x for _, x in ok]) if ok else None
    return [i for i, _ in ok], batch, bad


# ----------------------------------------------------------------------------- the model
def load_source(name: str, weights: str | None, padding: str) -> torch.nn.Module:
    """The plain model ``name`` with ``weights`` (an effnet_kernels or efficientnet_pytorch
    state dict, optionally under a "state_dict"/"model" key); no weights: the pretrained
    Lite0. ValueError when that cannot be done."""
    import effnet_kernels as ek
    from .convert import from_efficientnet_pytorch, load_lite0_pretrained

    if name not in ek.list_models():
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(ek.list_models())}")
    if weights is None:
        if name != DEFAULT_MODEL:
            raise ValueError(f"no pretrained weights ship for {name}: pass --weights FILE "
                             f"(only {DEFAULT_MODEL} has default weights)")
        try:
            return load_lite0_pretrained().eval()
        except RuntimeError as e:
            raise ValueError(str(e)) from e
    try:
        sd = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"cannot load --weights {weights!r}: {e}") from e
    # a checkpoint of `effnet-kernels train` says how to rebuild its model (padding, BN eps)
    arch = sd.get("architecture", {}) if isinstance(sd, dict) else {}
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ValueError(f"--weights {weights!r} holds a {type(sd).__name__}, not a state dict")
    if "stem.conv.weight" in sd:  # effnet_kernels keys
        nc = sd["classifier.weight"].shape[0] if "classifier.weight" in sd else 0
        m = ek.create_model(name, num_classes=nc, padding_mode=arch.get("padding_mode", padding),
                            **{k: arch[k] for k in ("bn_eps", "bn_momentum") if k in arch})
        try:
            m.load_state_dict(sd)
        except RuntimeError as e:
            raise ValueError(f"--weights {weights!r} does not fit {name}: {e}") from e
        return m.eval()
    return from_efficientnet_pytorch(sd, arch=name).eval()


def build_runner(args, device: torch.device, calib_batches):
    """(model to run, classifier or None): the embedding model and the classifier (top-k), or
    the embedding / feature model. ``calib_batches()`` gives the INT8 calibration batches."""
    import effnet_kernels as ek

    src = load_source(args.model, args.weights, args.padding).to(device)
    dtype = getattr(torch, args.dtype)
    base = ek.optimize(src, backend=args.backend, dtype=dtype)
    if args.int8_state:
        base = ek.load_quantized(src, torch.load(args.int8_state, map_location=device,
                                                 weights_only=True), backend=args.backend,
                                 dtype=dtype)
    elif args.int8:
        base = ek.quantize(base, calib_batches(), backend=args.backend)
        if args.save_int8_state:
            torch.save(base.state_dict(), args.save_int8_state)
    if args.features:
        return ek.optimize(base, features_only=True, out_indices=args.out_indices), None
    return ek.optimize(base, num_classes=0), (None if args.embeddings else base.classifier)


def labels(num_classes: int) -> list[str] | None:
    """ImageNet class names (torchvision's list) for a 1000-class model, else None."""
    if num_classes != 1000:
        return None
    try:
        from torchvision.models._meta import _IMAGENET_CATEGORIES
    except ImportError:
        return None
    return list(_IMAGENET_CATEGORIES)


def rows_of(args, out, classifier, names) -> list:
    """One output row per image of a batch: a list of (class, label, prob) for top-k, else a
    float32 array (embedding) or a list of arrays (feature maps)."""
    if args.features:
        maps = [t.float().contiguous().cpu().numpy() for t in out]
        return [[m[i] for m in maps] for i in range(len(maps[0]))]
    if classifier is None:
        return list(out.float().cpu().numpy())
    rows = []
    for e in out:  # row by row: one row's logits never depend on the batch it came in
        p = F.softmax(classifier(e[None]).float(), dim=-1)[0]
        top = p.topk(min(args.topk, p.numel()))
        rows.append([(int(c), names[int(c)] if names else None, float(v))
                     for v, c in zip(top.values.cpu(), top.indices.cpu())])
    return rows


# ----------------------------------------------------------------------------- output
def _f32(values) -> list[float]:
    """float32 values as Python floats of 9 significant digits (exact for float32)."""
    return [float(format(v, ".9g")) for v in np.asarray(values, np.float32).ravel().tolist()]


def write_output(path: str, args, files: list[str], rows: list[tuple[int, object]]) -> None:
    """Write ``rows`` ((file index, row), in order) to ``path`` (format by its suffix)."""
    kind = "features" if args.features else "embedding" if args.embeddings else "topk"
    tmp = path + ".part"  # never leave a half-written output under the real name
    if path.endswith(".npy"):
        if kind == "topk":
            raise ValueError("--out .npy holds one array: use it with --embeddings or one "
                             "--features map")
        arr = np.stack([r[0] if kind == "features" else r for _, r in rows]) if rows else \
            np.zeros((0,), np.float32)
        with open(tmp, "wb") as fh:
            np.save(fh, arr.astype(np.float32))
        with open(path + ".paths.txt", "w") as fh:
            fh.writelines(files[i] + "\n" for i, _ in rows)
    elif path.endswith(".jsonl"):
        with open(tmp, "w") as fh:
            for i, r in rows:
                rec = {"path": files[i]}
                if kind == "topk":
                    rec["topk"] = [{"class": c, "label": lb, "prob": _f32([p])[0]}
                                   for c, lb, p in r]
                elif kind == "embedding":
                    rec["embedding"] = _f32(r)
                else:
                    rec["features"] = {str(k): {"shape": list(m.shape), "data": _f32(m)}
                                       for k, m in zip(args.out_indices, r)}
                fh.write(json.dumps(rec) + "\n")
    else:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            for i, r in rows:
                if kind == "topk":
                    w.writerow([files[i], *[x for c, lb, p in r
                                            for x in (c, lb or "", format(p, ".9g"))]])
                else:
                    vals = r if kind == "embedding" else np.concatenate([m.ravel() for m in r])
                    w.writerow([files[i], *[format(v, ".9g") for v in _f32(vals)]])
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- running
def _distributed(device_arg: str | None) -> tuple[int, int, torch.device]:
    """(rank, world size, device); initialises torch.distributed under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = torch.device(device_arg or ("cuda" if torch.cuda.is_available() else "cpu"))
    if world <= 1:
        return 0, 1, dev
    import torch.distributed as dist

    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), dev


def run(args) -> int:
    from .quant.calibration import progress_bar

    if not args.out.endswith(OUT_SUFFIXES):
        print(f"error: --out must end in one of {', '.join(OUT_SUFFIXES)}", file=sys.stderr)
        return 2
    if args.out.endswith(".npy") and not (args.embeddings or (
            args.features and len(args.out_indices) == 1)):
        print("error: --out .npy holds one array: use it with --embeddings or --features with "
              "one --out-indices map", file=sys.stderr)
        return 2
    from .models import CONFIGS

    for name in ("batch_size", "topk", "calib_images"):
        if getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    files, missing = find_images(args.paths)
    rank, world, device = _distributed(args.device)
    size = args.resolution or getattr(CONFIGS.get(args.model), "resolution", 224)

    def loader(indices, workers):
        return DataLoader(ImageFiles(files, indices, size), batch_size=args.batch_size,
                          num_workers=workers, collate_fn=collate)

    def calib_batches():  # the same first images on every rank: the same int8 model
        first = list(range(min(args.calib_images, len(files))))
        batches = [b for _, b, _ in loader(first, 0) if b is not None]
        if not batches:
            raise ValueError("--int8: none of the first images could be read to calibrate")
        return [b.to(device) for b in batches]

    try:
        if not files:
            raise ValueError("no image files found in " + " ".join(args.paths))
        model, classifier = build_runner(args, device, calib_batches)
    except (ValueError, RuntimeError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
        return 2
    names = labels(classifier.weight.shape[0]) if classifier is not None else None
    mine = list(range(rank, len(files), world))
    rows, errors = [], []
    batches = loader(mine, args.workers)
    with torch.inference_mode():
        for idx, batch, bad in progress_bar(batches, len(batches), "predict",
                                            args.progress and rank == 0):
            for i, err in bad:
                print(f"predict: skipped {files[i]}: {err}", file=sys.stderr)
                errors.append((i, err))
            if batch is not None:
                out = model(batch.to(device, non_blocking=True))
                rows.extend(zip(idx, rows_of(args, out, classifier, names)))
    if world > 1:
        import torch.distributed as dist

        parts = [None] * world if rank == 0 else None
        dist.gather_object((rows, errors), parts, dst=0)
        if rank == 0:
            rows = [r for p in parts for r in p[0]]
            errors = [e for p in parts for e in p[1]]
        # every rank past the gather before any tears its gloo pairs down: a rank that destroyed
        # the group while a peer's transfer was in flight died with "terminate called" (seen in CI)
        dist.barrier()
        dist.destroy_process_group()
        if rank != 0:
            return 0
    rows.sort(key=lambda r: r[0])
    write_output(args.out, args, files, rows)
    for p, why in missing:
        print(f"predict: skipped {p}: {why}", file=sys.stderr)
    skipped = len(errors) + len(missing)
    print(f"predict: {len(rows)} images -> {args.out}"
          + (f" ({world} processes)" if world > 1 else "")
          + (f"; {skipped} skipped (unreadable or missing, see stderr)" if skipped else ""))
    return 0


def _indices(s: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in s.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {s!r}") from e


def add_parser(sub) -> None:
    """Register ``predict`` on the CLI's subparsers."""
    p = sub.add_parser("predict", help="batch inference over image files, folders and globs "
                       "(top-k, embeddings or features; torchrun-ready)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders, globs")
    p.add_argument("--out", required=True, help="output file: .jsonl, .csv or .npy")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model name (default {DEFAULT_MODEL})")
    p.add_argument("--weights", help="state dict (effnet_kernels or efficientnet_pytorch keys); "
                   f"default: the pretrained {DEFAULT_MODEL}")
    p.add_argument("--padding", default="symmetric", choices=["symmetric", "same"],
                   help="padding of an effnet_kernels --weights model (same: TF-trained)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--embeddings", action="store_true", help="write pooled embeddings")
    what.add_argument("--features", action="store_true", help="write feature maps")
    p.add_argument("--out-indices", type=_indices, default=(4,),
                   help="feature maps for --features, e.g. 2,3,4 (default 4: stride 32)")
    p.add_argument("--topk", type=int, default=5, help="classes per image (default 5)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--backend", default="auto", choices=["auto", "cuda", "triton", "cpu",
                                                         "torch"])
    p.add_argument("--resolution", type=int, help="input size (default: the model's own)")
    p.add_argument("--threads", type=int, help="CPU threads per process (default: torch's; "
                   "torchrun sets OMP_NUM_THREADS=1). Float sums may split differently with "
                   "another thread count: for bit-identical rows, keep it fixed")
    p.add_argument("--int8", action="store_true", help="run the INT8 model (ek.quantize)")
    p.add_argument("--calib-images", type=int, default=32,
                   help="--int8: calibrate on the first N images (default 32)")
    p.add_argument("--int8-state", help="load a saved quantized state dict instead")
    p.add_argument("--save-int8-state", help="save the calibrated quantized state dict")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(fn=run)
