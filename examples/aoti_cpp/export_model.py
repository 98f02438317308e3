"""Export an optimized EfficientNet as an AOTInductor package for C++ (see README.md here).

    python examples/aoti_cpp/export_model.py OUT_DIR [--model efficientnet_b0] [--size 224]
        [--backend cpu] [--pretrained]

Writes OUT_DIR/model.pt2 (``torch.export`` → ``torch._inductor.aoti_compile_and_package``) and,
for checking the C++ side, OUT_DIR/input.bin and OUT_DIR/expected.bin (the Python output for
that input; the .bin format is in run_package.cpp). The model: ``ek.optimize`` of
``--model`` (random weights, seeded, BN statistics from noise; ``--pretrained``: the real
Lite0) on the CPU, batch 1.
"""

from __future__ import annotations

import argparse
import os
import struct

import torch

import effnet_kernels as ek


def write_tensor(path: str, t: torch.Tensor) -> None:
    """int64 ndim, int64 sizes, float32 values (row-major): what run_package.cpp reads."""
    t = t.detach().float().contiguous()
    with open(path, "wb") as fh:
        fh.write(struct.pack(f"<q{t.dim()}q", t.dim(), *t.shape))
        fh.write(t.numpy().tobytes())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir")
    p.add_argument("--model", default="efficientnet_b0")
    p.add_argument("--size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"))
    p.add_argument("--backend", default="cpu", choices=["cpu", "torch", "auto"])
    p.add_argument("--pretrained", action="store_true", help="the real pretrained Lite0")
    args = p.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    torch.manual_seed(0)
    if args.pretrained:
        from effnet_kernels.convert import load_lite0_pretrained

        m = load_lite0_pretrained()
    else:  # random weights with BN statistics measured on noise: activations that do not
        # vanish layer by layer, so the comparison in C++ means something
        from effnet_kernels.data import bn_stats_from_random_data

        m = bn_stats_from_random_data(ek.create_model(args.model), 64)
    f = ek.optimize(m, backend=args.backend)
    x = torch.randn(1, 3, *args.size)
    with torch.no_grad():
        expected = f(x)
    ep = torch.export.export(f, (x,))
    pkg = torch._inductor.aoti_compile_and_package(
        ep, package_path=os.path.join(args.out_dir, "model.pt2"))
    write_tensor(os.path.join(args.out_dir, "input.bin"), x)
    write_tensor(os.path.join(args.out_dir, "expected.bin"), expected)
    print(f"wrote {pkg} ({f.name}, backends {f.backends}), input.bin, expected.bin")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
