"""Where INT8 error enters, measured: per-layer SQNR, logit SQNR per layer type (fake-quant
ablation) and what the float-kept parts would cost in int8. Analysis tools for reports and tests
(``benchmarks/int8_accuracy.py``): not imported by ``effnet_kernels``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import reference
from ..optimize import FusedEfficientNet
from .calibration import (
    dequantize_weight,
    fake_quant,
    int8_layers,
    qparams_from_range,
    quantize_weight,
    sqnr_db,
)
from .modules import QuantizedEfficientNet


def layer_sqnr(q: QuantizedEfficientNet, f: FusedEfficientNet, x: Tensor) -> list[dict]:
    """Where int8 error enters: for every int8 layer of ``q``, the SQNR (dB) of its output
    against the float layer of ``f`` *given the same (float) input, quantised* — each layer's
    own error, not the accumulated one — plus the SQNR of the logits end to end.

    Returns rows ``{"name", "type", "sqnr_db"}``; types: stem (quantising its output), expand,
    dw, dw_pool, project, head_pool, logits.
    """
    rows: list[dict] = []
    cap: dict[str, tuple] = {}
    handles = []
    pts = {"stem": f.stem, **int8_layers(f)}
    for name, mod in pts.items():
        def hook(_m, args, kwargs, out, name=name):
            cap[name] = (args, kwargs, out)
        handles.append(mod.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            ref_logits = f.forward_eager(x)
    finally:
        for h in handles:
            h.remove()

    qmods = {"stem": q.stem, **int8_layers(q)}
    block_in_q = {}
    for s, stage in enumerate(q.blocks):
        for j, blk in enumerate(stage):
            block_in_q[f"blocks.{s}.{j}"] = (blk.expand or blk.dw).in_q

    def qz(t, qp):
        return reference.quantize_per_tensor(t.float(), 1.0 / qp[0], qp[1])

    def dq(t, qp):
        return reference.dequantize(t, qp[0], qp[1])

    with torch.no_grad():
        for name, (args, kwargs, out) in cap.items():
            qm = qmods[name]
            if name == "stem":
                if qm.quantize_output:
                    rows.append({"name": name, "type": "stem", "sqnr_db": sqnr_db(
                        out.float(), dq(qz(out, qm.out_q), qm.out_q))})
                continue
            # a float layer (the first dw) takes the float input as it is
            xin = args[0] if getattr(qm, "is_float", False) else qz(args[0], qm.in_q)
            if name == "head":
                pool = qm(xin, pool_only=True)
                rows.append({"name": name, "type": "head_pool",
                             "sqnr_db": sqnr_db(out.float(), pool)})
                continue
            part = name.rsplit(".", 1)[1]
            if part == "dw":
                y, pool = qm(xin, return_pool=True)
                fy, fpool = out if isinstance(out, tuple) else (out, None)
                rows.append({"name": name, "type": "dw",
                             "sqnr_db": sqnr_db(fy.float(), dq(y, qm.out_q))})
                if fpool is not None:
                    rows.append({"name": name, "type": "dw_pool",
                                 "sqnr_db": sqnr_db(fpool.float(), pool)})
                continue
            gate = kwargs.get("gate")
            res = kwargs.get("residual")
            rq = None
            if res is not None:
                bq = block_in_q[name.rsplit(".", 1)[0]]
                rq = (qz(res, bq), bq)
            y = qm(xin, gate=gate, residual=rq)
            rows.append({"name": name, "type": part,
                         "sqnr_db": sqnr_db(out.float(), dq(y, qm.out_q))})
        rows.append({"name": "logits", "type": "logits",
                     "sqnr_db": sqnr_db(ref_logits.float(), q(x).float())})
    return rows


_ABLATION_TYPES = ("stem", "expand", "dw", "project", "head")


def logit_sqnr_by_type(q: QuantizedEfficientNet, f: FusedEfficientNet, x: Tensor,
                       types=_ABLATION_TYPES) -> dict[str, float]:
    """End-to-end view of where the error enters: the logits' SQNR (dB) against ``f`` when only
    one layer type is quantised — its int8 weights and its int8 output, with ``q``'s
    calibration — and everything else runs in float. Simulated in float on ``f`` (weights
    swapped for their dequantised int8 values, outputs rounded to their int8 grid by forward
    hooks): equal to the integer arithmetic up to float rounding (the SE gate's int8 rounding
    is not simulated). Types: stem (its output), expand, dw, project (with the block output it
    writes), head (weights only: the pool stays float); "dw.weight" / "dw.out" split the
    depthwise conv's two error sources. Also ``"all"``: every type at once."""
    with torch.no_grad():
        ref = f.forward_eager(x).float()
    fblocks = [b for st in f.blocks for b in st]
    qblocks = q.fused_blocks()

    def fq(t, qp):  # round onto the int8 grid, back to float in t's dtype
        return reference.dequantize(reference.requantize(t, 1.0 / qp[0], qp[1]),
                                    qp[0], qp[1]).to(t.dtype)

    def run(which) -> float:
        handles, saved = [], []

        def swap(fm, qm):  # the int8 layer's dequantised weights and (corrected) bias
            saved.append((fm, fm.weight, fm.bias))
            w = dequantize_weight(qm.weight, qm.w_scale)
            fm.weight = w.reshape(fm.weight.shape).to(fm.weight.dtype)
            fm.bias = qm.bias.to(fm.bias.dtype)

        def out_hook(qp):
            def h(_m, _a, out):
                if isinstance(out, tuple):
                    return (fq(out[0], qp),) + tuple(out[1:])
                return fq(out, qp)
            return h

        if "stem" in which and q.stem.quantize_output:
            handles.append(f.stem.register_forward_hook(out_hook(q.stem.out_q)))
        for fb, qb in zip(fblocks, qblocks):
            if "expand" in which and fb.expand is not None:
                swap(fb.expand, qb.expand)
                handles.append(fb.expand.register_forward_hook(out_hook(qb.expand.out_q)))
            if ("dw" in which or "dw.weight" in which) and not getattr(qb.dw, "is_float", False):
                swap(fb.dw, qb.dw)
            if "dw" in which or "dw.out" in which:
                handles.append(fb.dw.register_forward_hook(out_hook(qb.dw.out_q)))
            if "project" in which:
                swap(fb.project, qb.project)
                handles.append(fb.register_forward_hook(out_hook(qb.project.out_q)))
        if "head" in which:
            swap(f.head, q.head)
        try:
            with torch.no_grad():
                return sqnr_db(ref, f.forward_eager(x).float())
        finally:
            for h in handles:
                h.remove()
            for fm, w, b in reversed(saved):
                fm.weight, fm.bias = w, b

    out = {t: run({t}) for t in types}
    out["all"] = run(set(types))
    return out


_FLOAT_KEPT_TYPES = ("stem.in", "stem.weight", "se", "classifier")


def float_kept_sqnr(f: FusedEfficientNet, calib: Tensor, x: Tensor,
                    types=_FLOAT_KEPT_TYPES) -> dict[str, float | None]:
    """The measurement behind what :func:`quantize` keeps in float: the logits' SQNR (dB)
    against ``f`` when only one float-kept layer is made int8 and everything else stays float
    (simulated in float on ``f``, which is restored after). Weights: symmetric per output
    channel (:func:`quantize_weight`); inputs: per tensor, on the min/max range observed on
    ``calib``. Types: "stem.in" (the input image), "stem.weight" (the stem conv's weights),
    "se" (both SE FCs' weights and their inputs — the pool and the SiLU hidden; the gate stays
    float), "classifier" (its weights and the pooled features). A type the model does not
    have (SE in Lite0) maps to None."""
    unknown = set(types) - set(_FLOAT_KEPT_TYPES)
    if unknown:
        raise ValueError(f"unknown float-kept types {sorted(unknown)}; "
                         f"choose from {_FLOAT_KEPT_TYPES}")
    ses = [b.se for st in f.blocks for b in st if b.se is not None]
    ranges: dict[str, list[float]] = {}

    def observe(key: str, t: Tensor) -> Tensor:
        lo, hi = ranges.setdefault(key, [math.inf, -math.inf])
        ranges[key] = [min(lo, t.min().item()), max(hi, t.max().item())]
        return t

    def fake(key: str, t: Tensor) -> Tensor:
        return fake_quant(t.float(), *ranges[key]).to(t.dtype)

    def deq(w: Tensor) -> Tensor:
        return dequantize_weight(*quantize_weight(w)).to(w.dtype)

    def run(which: set, on, inp: Tensor) -> Tensor:
        """One forward with ``on(key, tensor)`` applied to the inputs of the chosen types
        (``observe`` to collect ranges, ``fake`` to quantise) and, with ``fake``, the chosen
        weights swapped for their int8 values."""
        handles, saved = [], []

        def swap(m, name):
            saved.append((m, name, getattr(m, name)))
            setattr(m, name, deq(getattr(m, name)))

        if "stem.in" in which:
            handles.append(f.stem.register_forward_pre_hook(
                lambda _m, a: (on("stem.in", a[0]),) + tuple(a[1:])))
        if "stem.weight" in which and on is fake:
            swap(f.stem, "weight")
        if "classifier" in which:
            handles.append(f.classifier.register_forward_pre_hook(
                lambda _m, a: (on("classifier.in", a[0]),) + tuple(a[1:])))
            if on is fake:
                swap(f.classifier, "weight")
        if "se" in which:
            for i, se in enumerate(ses):
                if on is fake:
                    swap(se, "w1")
                    swap(se, "w2")

                def gate(pooled, se=se, i=i):
                    p = on(f"se{i}.in", pooled.float())
                    h = on(f"se{i}.hidden", F.silu(p @ se.w1.float().t() + se.b1.float()))
                    return torch.sigmoid(h @ se.w2.float().t() + se.b2.float())
                se.gate = gate  # instance attribute: shadows the method until deleted
        try:
            with torch.no_grad():
                return f.forward_eager(inp).float()
        finally:
            for h in handles:
                h.remove()
            if "se" in which:
                for se in ses:
                    del se.gate
            for m, name, t in reversed(saved):
                setattr(m, name, t)

    out: dict[str, float | None] = dict.fromkeys(types)
    present = [t for t in out if t != "se" or ses]
    run(set(present), observe, calib)
    with torch.no_grad():
        ref = f.forward_eager(x).float()
    out.update({t: sqnr_db(ref, run({t}, fake, x)) for t in present})
    return out
