"""Whole models, eager baselines against the fused model (``effnet_kernels.optimize``).

GPU (B0, B4, B7 at their resolutions; batch 256 (B7: 64) and 1; skipped in quick mode, where
``python -m effnet_kernels bench --quick`` measures the models):

* ``eager_fp32_nchw``: torchvision's model (the ek model where torchvision lacks one), fp32 NCHW,
* ``eager_cudnn_fp16_cl``: channels_last, ``cudnn.benchmark``, BN folded, fp16,
* ``ours_cuda`` / ``ours_triton``: ``ek.optimize(model, backend=..., dtype=fp16)`` — skipped
  with the reason until ``effnet_kernels.optimize`` exists.

CPU (B0 at 224, batch 1, fp32): ``eager`` (NCHW), ``eager_cl_folded``, ``ours_cpu``.
torch.compile and ONNX Runtime are in ``python -m effnet_kernels bench`` (compiling takes
minutes). ``extra_info`` has img/s and the op-group memory floor of the batch (``bytes``:
one kernel per op-group, weights once) with the % of it reached.
"""

from __future__ import annotations

import copy
import functools

import benchutil as bu
import pytest
import torch

import effnet_kernels as ek
from effnet_kernels.bench import eager_model, fold_model_bn, model_traffic, set_inplace_act
from effnet_kernels.models.efficientnet import CONFIGS

CL = torch.channels_last


@functools.cache
def base_model(name: str):
    torch.manual_seed(0)
    return ek.create_model(name).eval()


def _gpu_cases():
    if not bu.HAS_GPU:
        return [pytest.param(None, marks=pytest.mark.skip(reason="no CUDA GPU visible: the GPU "
                                                          "cases are not generated"))]
    if bu.quick():
        return [pytest.param(None, marks=pytest.mark.skip(
            reason="quick mode: whole models are measured by `python -m effnet_kernels bench "
                   "--quick` (gpu_check.sh runs it)"))]
    return [pytest.param((m, b), id=f"{m.replace('efficientnet_', '')}-n{b}")
            for m in bu.gpu_models() for b in bu.gpu_batches(m)]


def _cpu_cases():
    if not bu.run_cpu_cases():
        return [pytest.param(None, marks=pytest.mark.skip(
            reason="GPU machine: CPU cases run only with EFFNET_BENCH_CPU=1"))]
    return [pytest.param(("efficientnet_b0", 1), id="b0-n1")]


def _build(impl: str, name: str, device: torch.device):
    """(model, input dtype, channels_last?) of one implementation."""
    base = base_model(name)
    if impl in ("eager_fp32_nchw", "eager"):
        return eager_model(base, name)[0].to(device), torch.float32, False
    if impl == "eager_cudnn_fp16_cl":
        m = set_inplace_act(fold_model_bn(base)).to(device=device, dtype=torch.float16,
                                                   memory_format=CL)
        return m, torch.float16, True
    if impl == "eager_cl_folded":
        return set_inplace_act(fold_model_bn(base)).to(device, memory_format=CL), torch.float32, True
    if impl.startswith("ours_"):
        if not hasattr(ek, "optimize"):
            pytest.skip("effnet_kernels.optimize does not exist yet (the fused model)")
        bu.skip_unless_backend(impl[len("ours_"):], device)
        dt = torch.float16 if device.type == "cuda" else torch.float32
        return (ek.optimize(copy.deepcopy(base).to(device), backend=impl[len("ours_"):],
                            dtype=dt), dt, True)
    raise ValueError(impl)


def _run(benchmark, name, batch, impl, device, copy_gbps, gpu_rounds):
    res = CONFIGS[name].resolution
    model, dt, cl = _build(impl, name, device)
    benchmark.group = f"model {'cpu ' if device.type == 'cpu' else ''}{name}@{res} n{batch}"
    x = torch.randn(batch, 3, res, res, device=device, dtype=dt)
    if cl:
        x = x.contiguous(memory_format=CL)
    es = torch.finfo(dt).bits // 8
    t = model_traffic(name, res, es)
    nbytes = batch * t["act_bytes_kernel"] + t["weight_bytes"]
    med = bu.measure(benchmark, model, [(x,)], device=device, nbytes=nbytes,
                     flops=batch * t["flops"], copy_gbps=copy_gbps, flush_l2=False,
                     gpu_rounds=gpu_rounds,
                     info={"op": "model", "model": name, "resolution": res, "batch": batch,
                           "dtype": bu.dtype_id(dt), "impl": impl,
                           "bytes_kind": "op-group floor: one kernel per op-group, weights once"})
    if med:
        benchmark.extra_info["img_per_s"] = batch / med


@pytest.mark.parametrize("impl", ("eager_fp32_nchw", "eager_cudnn_fp16_cl", "ours_cuda",
                                  "ours_triton"))
@pytest.mark.parametrize("case", _gpu_cases())
def test_model_gpu(benchmark, case, impl, gpu_copy_gbps):
    name, batch = case
    _run(benchmark, name, batch, impl, torch.device("cuda"), gpu_copy_gbps, 10)


@pytest.mark.parametrize("impl", ("eager", "eager_cl_folded", "ours_cpu"))
@pytest.mark.parametrize("case", _cpu_cases())
def test_model_cpu(benchmark, case, impl, cpu_copy_gbps):
    name, batch = case
    _run(benchmark, name, batch, impl, torch.device("cpu"), cpu_copy_gbps, None)
