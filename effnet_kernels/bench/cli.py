"""``python -m effnet_kernels bench``: the flags, their defaults, and the command."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict
from pathlib import Path

import torch

from ..models.efficientnet import CONFIGS
from .baselines import parse_backends
from .envinfo import cpu_has_bf16, result_filename
from .report import check_matplotlib, plot, print_report
from .runner import run
from .shapes import add_roofline

__all__ = ["add_parser", "cmd_bench", "configure_parser", "main"]

DESCRIPTION = """\
Benchmark whole EfficientNets: ours (ek.optimize / ek.quantize) against the baselines of the
device (GPU: eager fp32, cuDNN channels_last BN-folded, torch.compile, torch._int_mm int8; CPU:
eager, torch.compile, ONNX Runtime, OpenVINO, torch._int_mm int8), in one process. Every runner
of a (model, batch, dtype) is built first, then timed in interleaved rounds (one burst each per
round); a row is the median over rounds. Prints img/s, ms/batch, % of the memory floor (bytes
over the copy bandwidth measured in the same run) and speedups; --json keeps every raw round.
The methods are described in the docstrings of effnet_kernels/bench/*.py."""

GPU_DEFAULTS = {"models": ("efficientnet_b0", "efficientnet_b4", "efficientnet_b7"),
                "batch": (1, 64, 256)}
GPU_QUICK = {"models": ("efficientnet_b0", "efficientnet_b4"), "batch": (1, 256)}
CPU_DEFAULTS = {"models": ("efficientnet_b0", "efficientnet_lite0", "efficientnet_b4"),
                "batch": (1, 8, 64)}
CPU_QUICK = {"models": ("efficientnet_b0", "efficientnet_lite0"), "batch": (1, 8)}


def _csv(kind):
    def parse(s: str):
        vals = [v.strip() for v in s.split(",") if v.strip()]
        if not vals:
            raise argparse.ArgumentTypeError("empty list")
        return [kind(v) for v in vals]

    return parse


def _model_name(s: str) -> str:
    s = s.lower()
    for cand in (s, f"efficientnet_{s}"):
        if cand in CONFIGS:
            return cand
    raise argparse.ArgumentTypeError(f"unknown model {s!r}; valid: {', '.join(sorted(CONFIGS))}")


def _dtype_name(s: str) -> str:
    s = {"float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}.get(s, s)
    if s not in ("fp32", "fp16", "bf16", "int8"):
        raise argparse.ArgumentTypeError(f"dtype must be fp32, fp16, bf16 or int8, got {s!r}")
    return s


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {v}")
    return v


def _seconds(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {s!r}") from None
    if not (math.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number ≥ 0, got {s!r}")
    return v


def configure_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--models", type=_csv(_model_name), default=None,
                   help="comma list, e.g. b0,lite0 or efficientnet_b7, each at its own "
                        "resolution (default GPU B0,B4,B7, --quick B0,B4; CPU B0,Lite0,B4, "
                        "--quick B0,Lite0)")
    p.add_argument("--resolution", type=_positive_int, default=None,
                   help="override every model's input resolution (e.g. small for smoke tests)")
    p.add_argument("--batch", type=_csv(_positive_int), default=None,
                   help="comma list of batch sizes (default GPU 1,64,256, --quick 1,256; "
                        "CPU 1,8,64, --quick 1,8)")
    p.add_argument("--dtype", type=_csv(_dtype_name), default=None,
                   help="comma list of fp32, fp16, bf16, int8; default fp16 on a GPU; on the "
                        "CPU fp32 (and bf16 without --quick where the CPU has bf16 "
                        "instructions). int8: ours (ek.quantize) and the torch._int_mm baseline, "
                        "plus the fp16 (CPU: fp32) rows they are compared with")
    p.add_argument("--backends", default=None,
                   help="comma list (default: all of the device's). GPU: eager_fp32_nchw, "
                        "eager_cudnn_cl, compile, ours_cuda, ours_triton, int8_intmm (int8 "
                        "only); CPU: eager, compile (not in --quick unless named), "
                        "onnxruntime, openvino, ours_cpu, ours_torch (int8 only: the integer "
                        "reference, by default only for batches <= 4 GMAC), int8_intmm (int8 "
                        "only)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="CPU threads of torch, ONNX Runtime and OpenVINO (default: torch's)")
    p.add_argument("--quick", action="store_true",
                   help="fewer sizes (see --models, --batch), 0.3 s per row, 5 rounds; GPU: "
                        "torch.compile default mode; CPU: fp32 only, no compile unless asked")
    p.add_argument("--rounds", type=_positive_int, default=None,
                   help="interleaved rounds per (model, batch, dtype) (default 7; --quick 5)")
    p.add_argument("--min-time", type=_seconds, default=None,
                   help="seconds of timed calls per row, over all rounds (default 1.0; "
                        "--quick 0.3)")
    p.add_argument("--min-reps", type=_positive_int, default=None,
                   help="at least this many timed calls per row (default 5 GPU, 3 CPU)")
    p.add_argument("--copy-bytes", type=_positive_int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", default=None,
                   help="write results JSON here (a directory: YYYY-MM-DD-<device>-<commit>.json)")
    p.add_argument("--plot", default=None, help="write a PNG of img/s per backend and batch")
    p.add_argument("--load", default=None,
                   help="print (and --plot) the results of an earlier --json instead of measuring")
    p.add_argument("--quiet", action="store_true", help="no progress output, only the table")
    p.add_argument("--train", action="store_true",
                   help="training steps instead: eager vs ek.optimize_for_training (img/s, "
                        "saved MiB/image, peak MiB; --models, --batch (default 8), "
                        "--resolution, --rounds (default 3), --threads, --json)")
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to ``python -m effnet_kernels``'s subparsers."""
    p = subparsers.add_parser("bench", help="benchmark whole models against the baselines",
                              description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    configure_parser(p)
    p.set_defaults(fn=cmd_bench)
    return p


def finish_args(args) -> None:
    """Fill the device-dependent defaults in ``args``, set torch's threads, check the device
    and the backend names (SystemExit with the reason)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(args.device)
    except RuntimeError as e:
        raise SystemExit(f"bench: --device: {e}") from e
    if dev.type not in ("cuda", "cpu"):
        raise SystemExit(f"bench: --device must be cuda or cpu, got {args.device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench: --device cuda but no CUDA GPU is visible")
    cuda = dev.type == "cuda"
    sizes = (GPU_QUICK if args.quick else GPU_DEFAULTS) if cuda else (
        CPU_QUICK if args.quick else CPU_DEFAULTS)
    args.models = args.models or list(sizes["models"])
    args.batch = args.batch or list(sizes["batch"])
    if not args.dtype:
        cpu_dtypes = ["fp32"] + (["bf16"] if not args.quick and cpu_has_bf16() else [])
        args.dtype = ["fp16"] if cuda else cpu_dtypes
    args.rounds = args.rounds or (5 if args.quick else 7)
    args.min_time = args.min_time if args.min_time is not None else (0.3 if args.quick else 1.0)
    args.min_reps = args.min_reps or (5 if cuda else 3)
    try:
        parse_backends(args.backends, dev.type, args.quick)
    except ValueError as e:
        raise SystemExit(f"bench: {e}") from e


def _load(path: str) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"bench: cannot read {path}: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        raise SystemExit(f"bench: {path} is not a bench result (no \"results\" list)")
    add_roofline(doc)  # recomputed: the byte counts may have been refined since
    return doc


def cmd_bench(args) -> int:
    """Measure (or ``--load``), print the report, write ``--json`` / ``--plot``. Exit status 1
    when a backend failed."""
    if args.train:
        from .train import cmd_train_bench

        return cmd_train_bench(args)
    if args.plot:
        check_matplotlib()  # fail before measuring, not after
    if args.load:
        doc = _load(args.load)
    else:
        finish_args(args)

        def checkpoint(doc):
            if args.json:
                part = {**doc}
                add_roofline(part, args.models, args.resolution)
                write_json(part, args.json)

        doc = run(args, checkpoint)
    print_report(doc)
    if args.json and not args.load:
        print(f"wrote {write_json(doc, args.json)}")
    if args.plot:
        plot(doc, args.plot)
        print(f"wrote {args.plot}")
    return 1 if doc.get("errors") else 0


def write_json(doc: dict, dest: str) -> Path:
    """Write ``doc`` to ``dest`` (a directory: under :func:`result_filename`), atomically."""
    path = Path(dest)
    if path.is_dir():
        path = path / result_filename(doc)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=_json_default) + "\n")
    tmp.replace(path)
    return path


def _json_default(o):
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)
    return str(o)


def main(argv=None) -> int:
    """The bench command on its own (``python -m effnet_kernels.bench``)."""
    p = argparse.ArgumentParser(prog="python -m effnet_kernels bench", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    configure_parser(p)
    return cmd_bench(p.parse_args(argv))
