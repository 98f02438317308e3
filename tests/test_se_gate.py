"""effnet::se_gate on every backend (cpu, torch, triton through the interpreter without a GPU,
cuda on a GPU) against reference.py in float64: the weights are exact in every dtype (rounded
before the reference sees them) and the math is float32, so fp32 accuracy for every weight
dtype; for Triton also odd shapes, fp16/bf16 (S, C, 1, 1) weights with a strided pooled input,
every GPU autotune config, empty batches."""

import pytest
import torch

from effnet_kernels import ops, reference
from helpers import DEV, check_se, check_se_out, make_se, needs_ext, needs_triton

try:
    from effnet_kernels.triton import se as tse
except ImportError:  # no triton: the Triton tests skip (needs_triton)
    tse = None

BACKENDS = ["torch", pytest.param("cpu", marks=needs_ext)]

SE_CASES = [(1, 37, 5), (3, 1152, 48), (2, 96, 4), (4, 16, 8), (2, 3840, 160)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("N,C,S", SE_CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_se_gate(poison, backend, N, C, S, dtype):
    check_se(backend, N, C, S, dtype)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("N,C,S", SE_CASES + [(256, 1152, 48)])
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_se_gate_gpu(poison, backend, N, C, S, dtype):
    check_se(backend, N, C, S, dtype, "cuda")


def test_se_gate_accepts_conv_weights():
    pooled, w1, b1, w2, b2 = make_se(2, 24, 6, torch.float32)
    g4 = ops.se_gate(pooled, w1[:, :, None, None], b1, w2[:, :, None, None], b2, backend="torch")
    torch.testing.assert_close(g4, reference.se_gate(pooled, w1, b1, w2, b2))


@needs_ext
def test_opcheck():
    torch.library.opcheck(torch.ops.effnet.se_gate.default, tuple(make_se(3, 37, 5,
                                                                           torch.float32)))


@needs_ext
def test_cpp_checks_reject_bad_input_directly():
    pooled, w1, b1, w2, b2 = make_se(2, 24, 6, torch.float32)
    with pytest.raises(ValueError, match="w2 must be"):
        torch.ops.effnet.se_gate(pooled, w1, b1, w2[:, :3], b2)
    with pytest.raises(TypeError, match="pooled must be float32"):
        torch.ops.effnet.se_gate(pooled.half(), w1, b1, w2, b2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_se_gate_bad_input(backend):
    pooled, w1, b1, w2, b2 = make_se(2, 24, 6, torch.float32)
    f = lambda *a: ops.se_gate(*a, backend=backend)  # noqa: E731
    with pytest.raises(ValueError, match="w1 must have shape"):
        f(pooled, w1[:, :5], b1, w2, b2)
    with pytest.raises(ValueError, match="w2 must have shape"):
        f(pooled, w1, b1, w2[:, :5], b2)
    with pytest.raises(ValueError, match="b1 must have shape"):
        f(pooled, w1, b1[:2], w2, b2)
    with pytest.raises(TypeError, match="pooled must be float32"):
        f(pooled.half(), w1, b1, w2, b2)
    with pytest.raises(TypeError, match="w2 dtype"):
        f(pooled, w1, b1, w2.half(), b2)
    with pytest.raises(TypeError):
        f(pooled, w1.to(torch.int32), b1.to(torch.int32), w2.to(torch.int32), b2.to(torch.int32))
    with pytest.raises(ValueError, match="pooled must be 2-D"):
        f(pooled[0], w1, b1, w2, b2)


# ------------------------------------------------------------------------ Triton, in depth
@needs_triton
@pytest.mark.parametrize("N, C, S", [(3, 37, 5), (2, 1152, 48), (1, 96, 4), (5, 16, 1)])
def test_se_gate_odd_shapes(poison, N, C, S):
    args = make_se(N, C, S, device=DEV)
    check_se_out(ops.se_gate(*args, backend="triton"), *args)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_se_gate_half_weights_4d_noncontiguous(poison, dtype):
    """fp16/bf16 weights given as (S, C, 1, 1) / (C, S, 1, 1) conv weights, pooled a strided
    view: float32 math, so the fp32 tolerance still holds."""
    N, C, S = 3, 61, 7
    pooled, w1, b1, w2, b2 = make_se(N, C, S, dtype, DEV)
    pooled_t = torch.randn(C, 2 * N, device=DEV).t()[::2]  # (N, C), strides (1, 2N)
    assert not pooled_t.is_contiguous()
    gate = ops.se_gate(pooled_t, w1[:, :, None, None], b1, w2[:, :, None, None], b2,
                       backend="triton")
    check_se_out(gate, pooled_t, w1, b1, w2, b2)


TRITON_SE_CASES = [(3, 37, 5), (2, 70, 20)]
SE_CONFIGS = [({**c.kwargs, "num_warps": c.num_warps}, TRITON_SE_CASES[i % 2])
              for i, c in enumerate(tse._gpu_configs() if tse else [])]


@needs_triton
@pytest.mark.parametrize("cfg, case", SE_CONFIGS, ids=lambda v: (
    "b{BLOCK_B}c{BLOCK_C}nw{num_warps}".format(**v) if isinstance(v, dict) else
    "N{}C{}S{}".format(*v)))
def test_se_every_gpu_config(poison, cfg, case):
    args = make_se(*case, torch.float16, DEV)
    check_se_out(tse._launch(*args, config=cfg), *args)


@needs_triton
def test_se_config_pruning():
    configs = tse._gpu_configs()
    one = tse._prune_configs(configs, {"N": 1, "C": 1152, "S": 48})
    assert one and all(c.kwargs["BLOCK_B"] == 1 for c in one)
    wide = tse._prune_configs(configs, {"N": 256, "C": 3840, "S": 160})  # BLOCK_S = 256
    assert wide and all(c.kwargs["BLOCK_B"] * c.kwargs["BLOCK_C"] * 256 <= tse._REG_BUDGET
                        for c in wide)
    bc = lambda c: c.kwargs["BLOCK_B"] * c.kwargs["BLOCK_C"]  # noqa: E731
    huge = tse._prune_configs(configs, {"N": 8, "C": 64, "S": 4000})  # nothing fits: smallest
    assert 0 < len(huge) < len(configs) and all(bc(c) == min(map(bc, configs)) for c in huge)


@needs_triton
def test_se_gate_empty():
    args = make_se(0, 16, 4, device=DEV)
    assert ops.se_gate(*args, backend="triton").shape == (0, 16)
