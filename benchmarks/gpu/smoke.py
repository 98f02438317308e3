"""Smoke check of gpu_check.sh: every op on every backend once, and one whole B0 per backend.

    python benchmarks/gpu/smoke.py [--json PATH] [--backends cuda,triton] [--tiny]

Each op (``effnet_kernels.ops.<op>(..., backend=b)``) runs once per backend and dtype — fp32 and
fp16 for the float ops, int8 for ``dwconv_int8`` / ``pointwise_int8`` / ``quantize_per_tensor``
— on one B0-like shape (``--tiny``: a few pixels and channels, for the CPU and the Triton
interpreter), against ``effnet_kernels.reference``: float ops in float64 on the CPU
(rel. error ≤ 1e-4 fp32, ≤ 3e-3 fp16), int8 ops exactly (≤ 1 LSB, < 1 % of outputs off; pools
rel. ≤ 1e-4). A backend without an implementation of the op is ``n/a``, not a failure. Then
``ek.optimize(B0, backend=b, dtype=d)`` against the eager model (float64 on the CPU): fp32
rel. ≤ 1e-4, fp16 ≤ max(3 × the eager model's own fp16 error, 5e-3). Then one training step
of ``ek.optimize_for_training(B0, bn="batch")`` per training backend (GPU: "triton", "torch";
CPU: "cpu", "torch") against the eager model in train mode: logits and every gradient.

Default backends: "cuda" and "triton" on a GPU; "cpu", "torch" and "triton" (the interpreter)
without one, with ``--tiny`` implied. The JSON is rewritten after every case, so a run killed by
its timeout still leaves the cases done. Prints a PASS/FAIL table per op and backend; exit status
1 when any case fails.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import time
import traceback

from pathlib import Path

import torch

# The tree this script sits in is the one checked (an installed copy elsewhere is not).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
if not torch.cuda.is_available():  # before triton is imported anywhere (as tests/conftest.py)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import effnet_kernels as ek  # noqa: E402
from effnet_kernels import ops, reference  # noqa: E402

FLOAT_OPS = ("bias_act", "dwconv_bias_act", "se_gate", "pointwise_conv")
INT8_OPS = ("dwconv_int8", "pointwise_int8", "quantize_per_tensor")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
TOL = {"fp32": 1e-4, "fp16": 3e-3}
CL = torch.channels_last
# What ops.py raises for a backend that has no kernel of an op (or cannot run here).
_NA = re.compile(r"has no '?\w+'? implementation|is not available|not implemented", re.I)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64."""
    out, ref = out.detach().cpu().double(), ref.detach().cpu().double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


class Mismatch(AssertionError):
    pass


def _check_float(out, ref, tol: float) -> float:
    if torch.isnan(out).any():
        raise Mismatch("output has NaN")
    if tuple(out.shape) != tuple(ref.shape):
        raise Mismatch(f"shape {tuple(out.shape)} != {tuple(ref.shape)}")
    e = rel_err(out, ref)
    if e > tol:
        raise Mismatch(f"rel err {e:.3g} > {tol:g}")
    return e


def _check_int8(out, ref) -> float:
    """≤ 1 LSB everywhere, < 1 % of the outputs off (reference.py "INT8"); returns that share."""
    out = out.cpu()
    if out.dtype != torch.int8 or tuple(out.shape) != tuple(ref.shape):
        raise Mismatch(f"{out.dtype} {tuple(out.shape)} != int8 {tuple(ref.shape)}")
    d = (out.int() - ref.int()).abs()
    if d.max().item() > 1:
        raise Mismatch(f"max |y - ref| = {d.max().item()} LSB")
    frac = (d > 0).float().mean().item()
    if frac >= 0.01:
        raise Mismatch(f"{frac:.2%} of outputs 1 LSB off")
    return frac


def compare(out, ref, dtype: str) -> float:
    """The error of ``out`` (a tensor or (y, pool)) against ``ref``; raises Mismatch."""
    if isinstance(ref, tuple):
        errs = [compare(o, r, dtype if i == 0 else "pool") for i, (o, r) in
                enumerate(zip(out, ref))]
        return max(errs)
    if dtype == "int8":
        return _check_int8(out, ref)
    return _check_float(out, ref, TOL.get(dtype, 1e-4))


# ----------------------------------------------------------------------------- op cases
def _rand(g, *shape, scale=1.0):
    return torch.randn(*shape, generator=g) * scale


def _q8(g, *shape, lo=-128):
    return torch.randint(lo, 128, shape, generator=g, dtype=torch.int8)


def _nhwc(t):
    return t.contiguous(memory_format=CL)


def make_case(op: str, dtype: str, tiny: bool, seed: int = 0):
    """(args on the CPU, call(backend, args on the device) -> output, reference output)."""
    g = torch.Generator().manual_seed(seed)
    dt = DTYPES.get(dtype, torch.float32)
    f64 = torch.float64
    if op == "bias_act":
        N, C, H, W = (1, 24, 5, 5) if tiny else (2, 144, 56, 56)
        a = dict(x=_nhwc(_rand(g, N, C, H, W).to(dt)), b=_rand(g, C).to(dt))
        ref = reference.bias_act(a["x"].to(f64), a["b"].to(f64), "silu")
        return a, lambda be, t: ops.bias_act(t["x"], t["b"], "silu", backend=be), ref
    if op == "dwconv_bias_act":  # B0 stage 3's first depthwise: 5x5, stride 2, TF "same" pads
        N, C, H, W = (1, 16, 9, 9) if tiny else (2, 144, 56, 56)
        pads = (1, 2, 1, 2)
        a = dict(x=_nhwc(_rand(g, N, C, H, W).to(dt)), w=_rand(g, C, 1, 5, 5, scale=0.2).to(dt),
                 b=_rand(g, C, scale=0.1).to(dt))
        ref = reference.dwconv_bias_act(a["x"].to(f64), a["w"].to(f64), a["b"].to(f64), 2,
                                        pads, "silu", True)
        return a, lambda be, t: ops.dwconv_bias_act(t["x"], t["w"], t["b"], 2, pads, "silu",
                                                    True, backend=be), ref
    if op == "se_gate":
        N, C, S = (1, 16, 4) if tiny else (2, 240, 10)
        a = dict(p=_rand(g, N, C), w1=_rand(g, S, C, scale=C ** -0.5).to(dt),
                 b1=_rand(g, S, scale=0.1).to(dt), w2=_rand(g, C, S, scale=S ** -0.5).to(dt),
                 b2=_rand(g, C, scale=0.1).to(dt))
        ref = reference.se_gate(*(a[k].to(f64) for k in ("p", "w1", "b1", "w2", "b2")))
        return a, lambda be, t: ops.se_gate(t["p"], t["w1"], t["b1"], t["w2"], t["b2"],
                                            backend=be), ref
    if op == "pointwise_conv":  # a B0 projection: SE gate on load, residual in the epilogue
        N, Cin, Cout, H, W = (1, 16, 8, 5, 5) if tiny else (2, 240, 40, 28, 28)
        a = dict(x=_nhwc(_rand(g, N, Cin, H, W).to(dt)),
                 w=_rand(g, Cout, Cin, scale=Cin ** -0.5).to(dt), b=_rand(g, Cout).to(dt),
                 gate=torch.rand(N, Cin, generator=g), res=_nhwc(_rand(g, N, Cout, H, W).to(dt)))
        ref = reference.pointwise_conv(a["x"].to(f64), a["w"].to(f64), a["b"].to(f64),
                                       "identity", a["gate"].to(f64), a["res"].to(f64))
        return a, lambda be, t: ops.pointwise_conv(t["x"], t["w"], t["b"], "identity", t["gate"],
                                                   t["res"], backend=be), ref
    if op == "dwconv_int8":
        N, C, H, W, k = (1, 16, 7, 7, 3) if tiny else (2, 240, 28, 28, 5)
        a = dict(x=_nhwc(_q8(g, N, C, H, W)), w=_q8(g, C, 1, k, k, lo=-127),
                 s=(torch.rand(C, generator=g) + 0.5) * 3.0 / (k * 74 * 73), b=_rand(g, C))
        q = dict(stride=1, padding=None, in_zp=3, out_inv_scale=20.0, out_zp=-5, act="silu",
                 return_pool=True)
        ref = reference.dwconv_int8(a["x"], a["w"], a["s"], a["b"], 1, (k // 2,) * 4, 3, 20.0,
                                    -5, "silu", True)
        return a, lambda be, t: ops.dwconv_int8(t["x"], t["w"], t["s"], t["b"], **q,
                                                backend=be), ref
    if op == "pointwise_int8":  # as tests/test_quant_triton.py make_pw: act input O(1)
        N, Cin, Cout, H, W = (1, 16, 24, 4, 4) if tiny else (2, 240, 40, 28, 28)
        a = dict(x=_nhwc(_q8(g, N, Cin, H, W)), w=_q8(g, Cout, Cin, lo=-127),
                 s=(0.5 + torch.rand(Cout, generator=g)) / (Cin ** 0.5 * 74.0 * 73.0),
                 b=_rand(g, Cout, scale=0.5), gate=torch.rand(N, Cin, generator=g) * 0.98 + 0.01,
                 res=_nhwc(_q8(g, N, Cout, H, W)))
        q = dict(in_zp=-100, out_inv_scale=40.0, out_zp=5, act="identity")
        ref = reference.pointwise_int8(a["x"], a["w"], a["s"], a["b"], -100, 40.0, 5, "identity",
                                       a["gate"], a["res"], 1 / 90.0, -3)
        return a, lambda be, t: ops.pointwise_int8(t["x"], t["w"], t["s"], t["b"], **q,
                                                   gate=t["gate"], residual=t["res"],
                                                   res_scale=1 / 90.0, res_zp=-3,
                                                   backend=be), ref
    if op == "quantize_per_tensor":
        shape = (1, 16, 5, 5) if tiny else (2, 96, 56, 56)
        a = dict(x=_nhwc(_rand(g, *shape, scale=3.0).to(torch.float16)))
        ref = reference.quantize_per_tensor(a["x"], 30.0, 7)
        return a, lambda be, t: ops.quantize_per_tensor(t["x"], 30.0, 7, backend=be), ref
    raise ValueError(f"unknown op {op!r}")


# ----------------------------------------------------------------------------- model cases
def _b0(resolution: int, batch: int):
    """A random B0 (eval) with random BN statistics and biases (the init's 0/1 would hide
    folding mistakes), and an input batch."""
    torch.manual_seed(0)
    m = ek.efficientnet_b0().eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                c = mod.num_features
                mod.weight.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
                mod.bias.copy_(torch.randn(c, generator=g) * 0.1)
                mod.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
    return m, torch.randn(batch, 3, resolution, resolution, generator=g)


def model_case(backend: str, dtype: str, device: str, tiny: bool, cache: dict) -> float:
    """ek.optimize(B0) on ``backend`` against the eager model; returns the error."""
    if "ref" not in cache:
        m, x = _b0(32 if tiny else 224, 1 if tiny else 2)
        with torch.no_grad():
            cache.update(m=m, x=x, ref=copy.deepcopy(m).double()(x.double()))
    m, x, ref = cache["m"], cache["x"], cache["ref"]
    dt = DTYPES[dtype]
    f = ek.optimize(copy.deepcopy(m).to(device), backend=backend, dtype=dt)
    with torch.no_grad():
        y = f(x.to(device))
    if dtype == "fp32":
        return _check_float(y, ref, TOL["fp32"])
    key = f"eager_{dtype}"
    if key not in cache:  # the eager model's own error in this dtype: the yardstick
        with torch.no_grad():
            cache[key] = rel_err(copy.deepcopy(m).to(device, dt)(x.to(device, dt)), ref)
    return _check_float(y, ref, max(3 * cache[key], 5e-3))


# The training backends a smoke run tries (effnet_kernels.train_ops): the fused kernels of the
# device and the ATen composition.
TRAIN_BACKENDS = {"cuda": ("triton", "torch"), "cpu": ("cpu", "torch")}


def train_case(backend: str, device: str, tiny: bool) -> float:
    """One step of ``ek.optimize_for_training(B0, bn="batch", backend)`` against the eager
    model in train mode (dropout and stochastic depth off), fp32: the logits (rel. ≤ 1e-4) and
    every parameter's gradient (max |Δ| ≤ 1e-3 × (that gradient's max + 1e-3 × the model's));
    returns the logits' error."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    eager = ek.create_model("efficientnet_b0", num_classes=10, dropout=0.0,
                            drop_path_rate=0.0).to(device).train()
    src = copy.deepcopy(eager)
    ours = ek.optimize_for_training(src, bn="batch", backend=backend)
    g = torch.Generator().manual_seed(1)
    n, r = (2, 40) if tiny else (4, 96)  # small: the GPU check's smoke step has 90 s
    x = torch.randn(n, 3, r, r + 3, generator=g).to(device)
    t = torch.randint(0, 10, (n,), generator=g).to(device)
    outs = []
    for m in (eager, ours):
        y = m(x)
        F.cross_entropy(y, t).backward()
        outs.append(y.detach())
    err = _check_float(outs[1], outs[0], 1e-4)
    gmax = max(p.grad.abs().max().item() for p in eager.parameters())
    for (name, p), q in zip(eager.named_parameters(), src.parameters()):
        d = (p.grad - q.grad).abs().max().item()
        if d > 1e-3 * (p.grad.abs().max().item() + 1e-3 * gmax):
            raise Mismatch(f"gradient of {name}: max |diff| {d:.3g}")
    return err


# ----------------------------------------------------------------------------- driver
def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_one(fn, device: str) -> dict:
    """Run ``fn`` (returns the error); PASS, FAIL (with the reason) or n/a."""
    t0 = time.perf_counter()
    try:
        err = fn()
        _sync(device)
        rec = {"status": "PASS", "err": err}
    except Mismatch as e:
        rec = {"status": "FAIL", "detail": str(e)}
    except Exception as e:  # noqa: BLE001  (any failure is a result; the next case still runs)
        msg = f"{type(e).__name__}: {e}".strip()
        if isinstance(e, (RuntimeError, NotImplementedError)) and _NA.search(str(e)):
            rec = {"status": "n/a", "detail": msg.splitlines()[0]}
        else:
            rec = {"status": "FAIL", "detail": msg[:2000]}
            traceback.print_exc()
    rec["seconds"] = round(time.perf_counter() - t0, 3)
    return rec


def table(results: list[dict], backends: list[str]) -> str:
    """One line per op: each backend's PASS / FAIL(dtypes) / n/a / skipped."""
    lines = [f"{'op':<22}" + "".join(f"{b:>18}" for b in backends)]
    for op in dict.fromkeys(r["op"] for r in results):
        cells = []
        for b in backends:
            rs = [r for r in results if r["op"] == op and r["backend"] == b]
            bad = [r["dtype"] for r in rs if r["status"] == "FAIL"]
            if bad:
                cells.append(f"FAIL({','.join(bad)})")
            elif rs and all(r["status"] == rs[0]["status"] != "PASS" for r in rs):
                cells.append(rs[0]["status"])  # n/a or skipped
            elif any(r["status"] == "PASS" for r in rs):
                cells.append("PASS")
            else:
                cells.append("-")
        lines.append(f"{op:<22}" + "".join(f"{c:>18}" for c in cells))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="write the results here (rewritten after every case)")
    p.add_argument("--backends", help="comma list (default: cuda,triton on a GPU; "
                   "cpu,torch,triton on the CPU)")
    p.add_argument("--tiny", action="store_true", help="tiny shapes (implied on the CPU)")
    p.add_argument("--no-model", action="store_true", help="skip the whole-model forwards")
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tiny = args.tiny or device == "cpu"
    backends = (args.backends.split(",") if args.backends else
                ["cuda", "triton"] if device == "cuda" else ["cpu", "torch", "triton"])
    if device == "cuda":  # fp32 means fp32: no TF32 in cuDNN convs / matmuls (the references)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    out = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
           "torch": torch.__version__, "tiny": tiny, "backends": backends,
           "available": ops.available_backends(device), "results": [], "model": []}

    def save():
        if args.json:
            tmp = args.json + ".tmp"
            with open(tmp, "w") as fh:
                json.dump(out, fh, indent=1)
            os.replace(tmp, args.json)

    for op in FLOAT_OPS + INT8_OPS:
        for dtype in (("int8",) if op in INT8_OPS else tuple(DTYPES)):
            cpu_args, call, ref = make_case(op, dtype, tiny)
            dev_args = {k: v.to(device) for k, v in cpu_args.items()}
            for b in backends:
                rec = {"op": op, "backend": b, "dtype": dtype,
                       **run_one(lambda: compare(call(b, dev_args), ref, dtype), device)}
                out["results"].append(rec)
                print(f"{op:<22} {b:<8} {dtype:<5} {rec['status']:<5} "
                      f"{rec.get('err', rec.get('detail', ''))}", flush=True)
                save()
    cache: dict = {}
    for b in ([] if args.no_model else backends):
        for dtype in DTYPES:
            if b == "triton" and ops.triton_interpreting():
                rec = {"status": "skipped", "detail": "the Triton interpreter: a whole model "
                       "takes minutes (tests/test_optimize.py covers it, marked slow)"}
            else:
                rec = run_one(lambda: model_case(b, dtype, device, tiny, cache), device)
            out["model"].append({"model": "efficientnet_b0", "backend": b, "dtype": dtype, **rec})
            print(f"{'optimize(B0)':<22} {b:<8} {dtype:<5} {rec['status']:<5} "
                  f"{rec.get('err', rec.get('detail', ''))}", flush=True)
            save()
    out["train"] = []
    for b in ([] if args.no_model else TRAIN_BACKENDS[device]):
        if b == "triton" and ops.triton_interpreting():
            rec = {"status": "skipped", "detail": "the Triton interpreter: a whole training "
                   "step takes minutes (tests/test_train_ops.py covers the kernels)"}
        else:
            rec = run_one(lambda: train_case(b, device, tiny), device)
        out["train"].append({"model": "efficientnet_b0", "backend": b, "dtype": "fp32", **rec})
        print(f"{'train step(B0)':<22} {b:<8} fp32  {rec['status']:<5} "
              f"{rec.get('err', rec.get('detail', ''))}", flush=True)
        save()
    out["table"] = table(out["results"] + [dict(r, op="optimize(B0)") for r in out["model"]],
                         backends)
    out["train_table"] = table([dict(r, op="train step(B0)") for r in out["train"]],
                               list(TRAIN_BACKENDS[device]))
    out["failed"] = sum(r["status"] == "FAIL"
                        for r in out["results"] + out["model"] + out["train"])
    save()
    print("\n" + out["table"] + "\n\n" + out["train_table"])
    print(f"\nsmoke: {out['failed']} failed")
    return 1 if out["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
