"""pointwise_conv (1×1 conv as a fused GEMM) against the eager sequence users run.

Shapes: every distinct expand (bias + SiLU), project (SE gate on load, + residual when the block
has one) and head (pool_only: conv_head + BN + SiLU + global pool) 1×1 conv of each model
(``model_shapes``). GPU: ``ours_triton`` vs eager cuDNN ``conv2d`` (channels_last) + BN + act
(+ multiply by the SE gate first, + residual add; head: + mean), batch 256 (B7: 64) and 1,
fp16 (and fp32 outside quick mode). CPU: ``ours_cpu`` vs eager, batch 1, fp32, B0 shapes.
Bytes = x + y (pool for the head) + weights + gate + residual, once each; FLOPs = 2·M·Cin·Cout.
"""

from __future__ import annotations

import benchutil as bu
import pytest
import torch
import torch.nn.functional as F

from effnet_kernels import ops, reference
from effnet_kernels.bench import model_shapes

CL = torch.channels_last


def pw_shapes(model: str) -> list[tuple]:
    """Distinct (kind, Cin, Cout, H, W, gate, residual, pool_only, act) 1×1 convs, network order."""
    ms = model_shapes(model)
    out = []
    for b in ms.blocks:
        if b.expand:
            out.append(("expand", b.in_ch, b.mid_ch, b.h, b.w, False, False, False, "silu"))
        out.append(("project", b.mid_ch, b.out_ch, b.ho, b.wo, b.se_ch > 0, b.residual, False,
                    "identity"))
    out.append(("head", ms.head_in, ms.head_ch, *ms.head_hw, False, False, True, "silu"))
    return list(dict.fromkeys(out))


def _sid(model, s, batch, dt):
    kind, cin, cout, h, w, g, r, p, _ = s
    flags = "".join(f for f, on in (("-gate", g), ("-res", r), ("-pool", p)) if on)
    return (f"{model.replace('efficientnet_', '')}-{kind}-{cin}to{cout}_{h}x{w}{flags}-n{batch}-"
            f"{bu.dtype_id(dt)}")


def _run(benchmark, case, impl, device, copy_gbps):
    model, s, batch, dtype = case
    kind, cin, cout, h, w, has_gate, has_res, pool_only, act = s
    if impl.startswith("ours_"):
        bu.skip_unless_backend(impl[len("ours_"):], device)
    benchmark.group = f"pointwise {'cpu ' if device.type == 'cpu' else ''}" + \
        _sid(model, s, batch, dtype).replace("-", " ")
    es = torch.finfo(dtype).bits // 8
    M = batch * h * w
    nbytes = es * (M * cin + cin * cout + cout) + (batch * cout * 4 if pool_only else es * M * cout)
    nbytes += batch * cin * 4 if has_gate else 0
    nbytes += es * M * cout if has_res else 0

    def one_input():
        x = torch.randn(batch, cin, h, w, device=device, dtype=dtype).contiguous(memory_format=CL)
        g = torch.rand(batch, cin, device=device) if has_gate else None
        r = (torch.randn(batch, cout, h, w, device=device, dtype=dtype).contiguous(memory_format=CL)
             if has_res else None)
        return x, g, r

    xs = [one_input() for _ in range(bu.n_copies(es * M * (cin + cout), device))]
    wt = torch.randn(cout, cin, device=device, dtype=dtype) / cin ** 0.5
    bias = torch.randn(cout, device=device, dtype=dtype)
    if impl.startswith("ours_"):
        backend = impl[len("ours_"):]

        def fn(x, g, r):
            return ops.pointwise_conv(x, wt, bias, act, g, r, pool_only, backend=backend)

        with torch.inference_mode():  # a fast wrong kernel is not a result
            x, g, r = xs[0]
            f32 = lambda t: None if t is None else t.float()  # noqa: E731
            ref = reference.pointwise_conv(x.float(), wt.float(), bias.float(), act, g, f32(r),
                                           pool_only)
            tol = 1e-4 if dtype == torch.float32 else 3e-2
            torch.testing.assert_close(fn(x, g, r).float(), ref.float(), rtol=tol, atol=tol)
    else:  # eager: conv (BN not folded, as users run it) + BN + act (+ gate, + residual, + pool)
        w4 = wt[:, :, None, None].contiguous(memory_format=CL)
        rm, rv = torch.randn(cout, device=device, dtype=dtype), torch.rand(
            cout, device=device, dtype=dtype) + 0.5
        actf = {"silu": F.silu, "identity": lambda t: t}[act]

        def fn(x, g, r):
            if g is not None:
                x = x * g[:, :, None, None].to(x.dtype)
            v = actf(F.batch_norm(F.conv2d(x, w4), rm, rv, None, bias, False, 0.0, 1e-5))
            if r is not None:
                v = v + r
            return v.float().mean((2, 3)) if pool_only else v

    bu.measure(benchmark, fn, xs, device=device, nbytes=nbytes, flops=2 * M * cin * cout,
               copy_gbps=copy_gbps,
               info={"op": "pointwise_conv", "model": model, "kind": kind, "Cin": cin,
                     "Cout": cout, "H": h, "W": w, "batch": batch, "gate": has_gate,
                     "residual": has_res, "pool_only": pool_only, "dtype": bu.dtype_id(dtype),
                     "impl": impl, "act": act})


@pytest.mark.parametrize("impl", ("ours_triton", "eager"))
@pytest.mark.parametrize("case", bu.gpu_cases(pw_shapes, _sid))
def test_pointwise_gpu(benchmark, case, impl, gpu_copy_gbps):
    _run(benchmark, case, impl, torch.device("cuda"), gpu_copy_gbps)


@pytest.mark.parametrize("impl", ("ours_cpu", "eager"))
@pytest.mark.parametrize("case", bu.cpu_cases(pw_shapes, _sid))
def test_pointwise_cpu(benchmark, case, impl, cpu_copy_gbps):
    _run(benchmark, case, impl, torch.device("cpu"), cpu_copy_gbps)
