"""se_gate (both SE FCs, sigmoid(W2·silu(W1·p + b1) + b2)) against eager PyTorch.

Shapes: every distinct (expanded width C, squeeze width S) of each model's SE blocks. GPU:
``ours_cuda``, ``ours_triton`` vs eager (1×1 conv → SiLU → 1×1 conv → sigmoid on the (N, C, 1, 1)
pool, as torchvision runs it), batch 256 (B7: 64) and 1, weights in fp16 (and fp32 outside quick
mode). Target (issue 4): ≤ 10 µs at batch 256 on an H100. CPU: ``ours_cpu`` vs eager, batch 1,
fp32, B0 shapes. Bytes = pool in + gate out (float32) + weights; FLOPs = 4·N·C·S.
"""

from __future__ import annotations

import benchutil as bu
import pytest
import torch
import torch.nn.functional as F

from effnet_kernels import ops, reference
from effnet_kernels.bench import model_shapes


def se_shapes(model: str) -> list[tuple[int, int]]:
    return list(dict.fromkeys((b.mid_ch, b.se_ch) for b in model_shapes(model).blocks
                              if b.se_ch > 0))


def _sid(model, shape, batch, dt):
    c, s = shape
    return f"{model.replace('efficientnet_', '')}-C{c}_S{s}-n{batch}-{bu.dtype_id(dt)}"


def _run(benchmark, case, impl, device, copy_gbps):
    model, (C, S), batch, dtype = case
    if impl.startswith("ours_"):
        bu.skip_unless_backend(impl[len("ours_"):], device)
    benchmark.group = f"se_gate {'cpu ' if device.type == 'cpu' else ''}" + \
        _sid(model, (C, S), batch, dtype).replace("-", " ")
    es = torch.finfo(dtype).bits // 8
    nbytes = 2 * batch * C * 4 + es * (2 * C * S + C + S)
    pools = [(torch.randn(batch, C, device=device),) for _ in range(bu.n_copies(batch * C * 4,
                                                                               device))]
    w1 = torch.randn(S, C, device=device, dtype=dtype) / C ** 0.5
    b1 = torch.randn(S, device=device, dtype=dtype)
    w2 = torch.randn(C, S, device=device, dtype=dtype) / S ** 0.5
    b2 = torch.randn(C, device=device, dtype=dtype)
    if impl.startswith("ours_"):
        backend = impl[len("ours_"):]

        def fn(p):
            return ops.se_gate(p, w1, b1, w2, b2, backend=backend)

        with torch.inference_mode():  # a fast wrong kernel is not a result
            p = pools[0][0]
            torch.testing.assert_close(fn(p), reference.se_gate(p, w1, b1, w2, b2).float(),
                                       rtol=1e-4, atol=1e-5)
    else:
        w14, w24 = w1[:, :, None, None], w2[:, :, None, None]

        def fn(p):
            s = p.to(dtype)[:, :, None, None]
            return torch.sigmoid(F.conv2d(F.silu(F.conv2d(s, w14, b1)), w24, b2))

    bu.measure(benchmark, fn, pools, device=device, nbytes=nbytes, flops=4 * batch * C * S,
               copy_gbps=copy_gbps, flush_l2=False,
               info={"op": "se_gate", "model": model, "C": C, "S": S, "batch": batch,
                     "dtype": bu.dtype_id(dtype), "impl": impl})


@pytest.mark.parametrize("impl", ("ours_cuda", "ours_triton", "eager"))
@pytest.mark.parametrize("case", bu.gpu_cases(se_shapes, _sid))
def test_se_gate_gpu(benchmark, case, impl, gpu_copy_gbps):
    _run(benchmark, case, impl, torch.device("cuda"), gpu_copy_gbps)


@pytest.mark.parametrize("impl", ("ours_cpu", "eager"))
@pytest.mark.parametrize("case", bu.cpu_cases(se_shapes, _sid))
def test_se_gate_cpu(benchmark, case, impl, cpu_copy_gbps):
    _run(benchmark, case, impl, torch.device("cpu"), cpu_copy_gbps)
