"""Layer shapes, bytes and FLOPs of the benchmarked ops, as Markdown tables (for NOTES.md).

    python benchmarks/shapes.py                       # B0, B4, B7 depthwise layers, fp16
    python benchmarks/shapes.py --batch 1 --dtype fp32 --models b0 --copy-gbps 3000
    python benchmarks/shapes.py --models b0 --roofline

The numbers come from ``effnet_kernels.bench`` (``dw_layers``, ``dwconv_bytes``,
``model_traffic``), the same functions the benchmarks record in their JSON. ``--copy-gbps``
adds the memory floor (bytes / bandwidth) of each layer.
"""

from __future__ import annotations

import argparse
import sys

from effnet_kernels.bench import ELEM_SIZE, dw_layers, dwconv_bytes, dwconv_flops, model_traffic


def _name(m: str) -> str:
    return m if m.startswith("efficientnet_") else f"efficientnet_{m}"


def dw_table(models, batch: int | None, dtype: str, copy_gbps: float | None) -> str:
    es = ELEM_SIZE[dtype]
    head = "| model | layer (C, H×W, k, s) | Ho×Wo | batch | MB moved | MFLOP | FLOP/B |"
    sep = "|---|---|---|---|---|---|---|"
    if copy_gbps:
        head += f" floor µs @ {copy_gbps:g} GB/s |"
        sep += "---|"
    rows = [head, sep]
    for m in models:
        n = batch or (64 if m == "efficientnet_b7" else 256)
        for d in dw_layers(m):
            nb = dwconv_bytes(n, d.c, d.h, d.w, d.ho, d.wo, d.k, es)
            fl = dwconv_flops(n, d.c, d.ho, d.wo, d.k)
            row = (f"| {m.replace('efficientnet_', '')} | {d.c}, {d.h}×{d.w}, {d.k}, {d.stride} "
                   f"| {d.ho}×{d.wo} | {n} | {nb / 1e6:.2f} | {fl / 1e6:.1f} | {fl / nb:.2f} |")
            if copy_gbps:
                row += f" {nb / (copy_gbps * 1e9) * 1e6:.1f} |"
            rows.append(row)
    return "\n".join(rows)


def roofline_table(models, dtype: str) -> str:
    es = ELEM_SIZE[dtype]
    rows = [("| model | res | MB/img, one kernel per op-group | MB/img, one kernel per block | "
            "weights MB | GFLOP/img |"), "|---|---|---|---|---|---|"]
    for m in models:
        t = model_traffic(m, None, es)
        rows.append(f"| {m.replace('efficientnet_', '')} | {t['resolution']} | "
                    f"{t['act_bytes_kernel'] / 1e6:.1f} | {t['act_bytes_block'] / 1e6:.1f} | "
                    f"{t['weight_bytes'] / 1e6:.1f} | {t['flops'] / 1e9:.3f} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="b0,b4,b7")
    p.add_argument("--batch", type=int, default=None, help="default 256 (B7: 64)")
    p.add_argument("--dtype", default="fp16", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--copy-gbps", type=float, default=None)
    p.add_argument("--roofline", action="store_true", help="whole-model traffic instead")
    a = p.parse_args(argv)
    models = [_name(m.strip()) for m in a.models.split(",") if m.strip()]
    print(roofline_table(models, a.dtype) if a.roofline
          else dw_table(models, a.batch, a.dtype, a.copy_gbps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
