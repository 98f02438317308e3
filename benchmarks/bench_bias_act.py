"""bias_act (y = act(x + bias[c]), channels_last) against eager PyTorch.

Shapes: the maps EfficientNet runs a bias + SiLU over — the stem output, every distinct expanded
(post-1×1) map and the head map of each model (``model_shapes``). GPU: ``ours_cuda``,
``ours_triton`` vs eager ``F.silu(x + b.view(1, C, 1, 1))``, batch 256 (B7: 64) and 1, fp16
and fp32 (quick: B0, fp16). CPU: ``ours_cpu`` vs eager, batch 1, fp32, B0 shapes. Bytes = x once
+ y once + bias; FLOPs counted as 2 per element (the add and the SiLU multiply).
"""

from __future__ import annotations

import benchutil as bu
import pytest
import torch
import torch.nn.functional as F

from effnet_kernels import ops
from effnet_kernels.bench import model_shapes

CL = torch.channels_last


def act_shapes(model: str) -> list[tuple[int, int, int]]:
    """Distinct (C, H, W) maps that get bias + SiLU: stem, expanded maps, head (network order)."""
    ms = model_shapes(model)
    shapes = [(ms.stem_ch, *ms.stem_hw)]
    shapes += [(b.mid_ch, b.h, b.w) for b in ms.blocks if b.expand]
    shapes.append((ms.head_ch, *ms.head_hw))
    return list(dict.fromkeys(shapes))


def _sid(model, shape, batch, dt):
    c, h, w = shape
    return f"{model.replace('efficientnet_', '')}-C{c}_{h}x{w}-n{batch}-{bu.dtype_id(dt)}"


def _run(benchmark, case, impl, device, copy_gbps):
    model, (C, H, W), batch, dtype = case
    if impl.startswith("ours_"):
        bu.skip_unless_backend(impl[len("ours_"):], device)
    benchmark.group = (f"bias_act {'cpu ' if device.type == 'cpu' else ''}"
                       f"{_sid(model, (C, H, W), batch, dtype).replace('-', ' ')}")
    es = torch.finfo(dtype).bits // 8
    numel = batch * C * H * W
    xs = [(torch.randn(batch, C, H, W, device=device, dtype=dtype).contiguous(memory_format=CL),)
          for _ in range(bu.n_copies(numel * es, device))]
    bias = torch.randn(C, device=device, dtype=dtype)
    if impl.startswith("ours_"):
        backend = impl[len("ours_"):]

        def fn(x):
            return ops.bias_act(x, bias, "silu", backend=backend)

        with torch.inference_mode():  # a fast wrong kernel is not a result
            x = xs[0][0]
            ref = F.silu(x.float() + bias.float().view(1, -1, 1, 1))
            tol = 1e-5 if dtype == torch.float32 else 1e-2
            torch.testing.assert_close(fn(x).float(), ref, rtol=tol, atol=tol)
    else:
        b4 = bias.view(1, -1, 1, 1)

        def fn(x):
            return F.silu(x + b4)

    bu.measure(benchmark, fn, xs, device=device, nbytes=es * (2 * numel + C), flops=2 * numel,
               copy_gbps=copy_gbps,
               info={"op": "bias_act", "model": model, "C": C, "H": H, "W": W, "batch": batch,
                     "dtype": bu.dtype_id(dtype), "impl": impl, "act": "silu"})


@pytest.mark.parametrize("impl", ("ours_cuda", "ours_triton", "eager"))
@pytest.mark.parametrize("case", bu.gpu_cases(act_shapes, _sid))
def test_bias_act_gpu(benchmark, case, impl, gpu_copy_gbps):
    _run(benchmark, case, impl, torch.device("cuda"), gpu_copy_gbps)


@pytest.mark.parametrize("impl", ("ours_cpu", "eager"))
@pytest.mark.parametrize("case", bu.cpu_cases(act_shapes, _sid))
def test_bias_act_cpu(benchmark, case, impl, cpu_copy_gbps):
    _run(benchmark, case, impl, torch.device("cpu"), cpu_copy_gbps)
