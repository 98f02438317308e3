"""dwconv_bias_act (depthwise k×k + folded BN + SiLU + SE squeeze) against what users run today.

Every distinct depthwise layer shape of B0, B4 and B7 at their resolutions (``dw_layers``;
stride-2 layers halve), batch 256 (B7: 64) and 1, fp16 and fp32 on a GPU:

* ``ours_cuda`` / ``ours_triton``: ``ops.dwconv_bias_act(..., return_pool=True, backend=...)``,
* ``cudnn_unfused``: ``F.conv2d(groups=C)`` on channels_last + ``F.batch_norm`` + SiLU (in place)
  + ``adaptive_avg_pool2d`` (the SE squeeze) — the torchvision/timm sequence,
* ``cudnn_folded``: the same conv with BN folded into weight and bias, + SiLU + pool.

On the CPU: ``ours_cpu`` vs eager ``F.conv2d`` + SiLU + mean (NCHW as users run it, and
channels_last), batch 1, fp32, B0 shapes. Groups are one layer shape × batch × dtype; bytes
(x once, y once, weights, the fp32 pool) and FLOPs (2·k²·N·C·Ho·Wo) go into ``extra_info``.
Each ``ours`` case is checked against the folded eager result before it is timed.
"""

from __future__ import annotations

import benchutil as bu
import pytest
import torch
import torch.nn.functional as F

from effnet_kernels import ops
from effnet_kernels.bench import DWLayer, dw_layers, dwconv_bytes, dwconv_flops

CL = torch.channels_last
GPU_IMPLS = ("ours_cuda", "ours_triton", "cudnn_unfused", "cudnn_folded")
CPU_IMPLS = ("ours_cpu", "eager_nchw", "eager_cl")
BN_EPS = 1e-5


def _short(model: str) -> str:
    return model.replace("efficientnet_", "")


def _gpu_cases():
    if not bu.HAS_GPU:
        return [pytest.param(None, marks=pytest.mark.skip(reason="no CUDA GPU visible: the GPU "
                                                          "cases are not generated"))]
    out = []
    for model in bu.gpu_models():
        for layer in dw_layers(model):
            for batch in bu.gpu_batches(model):
                for dt in bu.gpu_dtypes():
                    out.append(pytest.param((layer, batch, dt),
                                            id=f"{_short(model)}-{layer.name}-n{batch}-"
                                               f"{bu.dtype_id(dt)}"))
    return out


def _cpu_cases():
    if not bu.run_cpu_cases():
        return [pytest.param(None, marks=pytest.mark.skip(
            reason="GPU machine: CPU cases run only with EFFNET_BENCH_CPU=1"))]
    return [pytest.param((layer, 1, torch.float32), id=f"b0-{layer.name}-n1-fp32")
            for layer in dw_layers("efficientnet_b0")]


class _Layer:
    """Random inputs and parameters of one layer (BN statistics and their folded form)."""

    def __init__(self, layer: DWLayer, batch: int, dtype: torch.dtype, device: torch.device,
                 layout=CL):
        g = torch.Generator(device="cpu").manual_seed(layer.c * 1000 + layer.h)
        C, k = layer.c, layer.k
        self.layer, self.stride, self.pad = layer, layer.stride, (k - 1) // 2
        w = torch.randn(C, 1, k, k, generator=g) * (2.0 / k)
        gamma, beta = 1 + 0.1 * torch.randn(C, generator=g), 0.1 * torch.randn(C, generator=g)
        mean, var = 0.1 * torch.randn(C, generator=g), 0.5 + torch.rand(C, generator=g)
        scale = gamma / torch.sqrt(var + BN_EPS)
        to = {"device": device, "dtype": dtype}
        self.w, self.gamma, self.beta = w.to(**to), gamma.to(**to), beta.to(**to)
        self.mean, self.var = mean.to(**to), var.to(**to)
        self.wf = (w * scale.view(-1, 1, 1, 1)).to(**to)
        self.bf = (beta - mean * scale).to(**to)
        in_bytes = batch * C * layer.h * layer.w * torch.finfo(dtype).bits // 8
        self.xs = [(torch.randn(batch, C, layer.h, layer.w, **to).contiguous(memory_format=layout),)
                   for _ in range(bu.n_copies(in_bytes, device))]
        es = torch.finfo(dtype).bits // 8
        self.nbytes = dwconv_bytes(batch, C, layer.h, layer.w, layer.ho, layer.wo, k, es)
        self.flops = dwconv_flops(batch, C, layer.ho, layer.wo, k)

    # the implementations: each returns (y, pool)
    def ours(self, backend):
        def fn(x):
            return ops.dwconv_bias_act(x, self.wf, self.bf, self.stride, None, "silu",
                                       return_pool=True, backend=backend)
        return fn

    def cudnn_unfused(self, x):
        y = F.conv2d(x, self.w, None, self.stride, self.pad, 1, self.layer.c)
        y = F.batch_norm(y, self.mean, self.var, self.gamma, self.beta, False, 0.0, BN_EPS)
        y = F.silu(y, inplace=True)
        return y, F.adaptive_avg_pool2d(y, 1)

    def cudnn_folded(self, x):
        y = F.silu(F.conv2d(x, self.wf, self.bf, self.stride, self.pad, 1, self.layer.c),
                   inplace=True)
        return y, F.adaptive_avg_pool2d(y, 1)

    def eager(self, x):
        y = F.silu(F.conv2d(x, self.wf, self.bf, self.stride, self.pad, 1, self.layer.c))
        return y, y.mean((2, 3))

    def reference(self, x):
        """The folded sequence in float32 (the pool from float32 activations, as the op's)."""
        y = F.silu(F.conv2d(x.float(), self.wf.float(), self.bf.float(), self.stride, self.pad, 1,
                            self.layer.c))
        return y, y.mean((2, 3))


def _check(fn, L: _Layer, dtype):
    """A fast wrong kernel is not a result: compare with the folded eager sequence first."""
    with torch.inference_mode():
        x = L.xs[0][0]
        y, pool = fn(x)
        ry, rpool = L.reference(x)
        tol = 1e-3 if dtype == torch.float32 else 3e-2
        torch.testing.assert_close(y.float(), ry.float(), rtol=tol, atol=tol)
        torch.testing.assert_close(pool.float().view(-1), rpool.float().reshape(-1),
                                   rtol=tol, atol=tol)


def _info(L: _Layer, batch, dtype, impl):
    ly = L.layer
    return {"op": "dwconv_bias_act", "model": ly.model, "resolution": ly.resolution,
            "layer": ly.name, "stage": ly.stage, "C": ly.c, "H": ly.h, "W": ly.w, "k": ly.k,
            "stride": ly.stride, "Ho": ly.ho, "Wo": ly.wo, "batch": batch,
            "dtype": bu.dtype_id(dtype), "impl": impl}


@pytest.mark.parametrize("impl", GPU_IMPLS)
@pytest.mark.parametrize("case", _gpu_cases())
def test_dwconv_gpu(benchmark, case, impl, gpu_copy_gbps):
    layer, batch, dtype = case
    dev = torch.device("cuda")
    if impl.startswith("ours_"):
        bu.skip_unless_backend(impl[len("ours_"):], dev)
    benchmark.group = f"dwconv {_short(layer.model)} {layer.name} n{batch} {bu.dtype_id(dtype)}"
    L = _Layer(layer, batch, dtype, dev)
    if impl.startswith("ours_"):
        fn = L.ours(impl[len("ours_"):])
        _check(fn, L, dtype)
    else:
        fn = getattr(L, impl)
    bu.measure(benchmark, fn, L.xs, device=dev, nbytes=L.nbytes, flops=L.flops,
               copy_gbps=gpu_copy_gbps, info=_info(L, batch, dtype, impl))


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("case", _cpu_cases())
def test_dwconv_cpu(benchmark, case, impl, cpu_copy_gbps):
    layer, batch, dtype = case
    dev = torch.device("cpu")
    if impl == "ours_cpu":
        bu.skip_unless_backend("cpu", dev)
    benchmark.group = f"dwconv cpu {_short(layer.model)} {layer.name} n{batch} fp32"
    L = _Layer(layer, batch, dtype, dev, layout=torch.contiguous_format if impl == "eager_nchw"
               else CL)
    if impl == "ours_cpu":
        fn = L.ours("cpu")
        _check(fn, L, dtype)
    else:
        fn = L.eager
    bu.measure(benchmark, fn, L.xs, device=dev, nbytes=L.nbytes, flops=L.flops,
               copy_gbps=cpu_copy_gbps, info=_info(L, batch, dtype, impl))
