"""The CPU ISA switch (csrc/common/cpu_isa.h: EFFNET_CPU_ISA, effnet_kernels._C.set_cpu_isa /
cpu_isa / cpu_isas) and every C++ CPU kernel run under each ISA level this machine has (the
``cpu_isa`` fixture of conftest.py), against reference.py on odd shapes: the baseline build of
the kernels with ISA variants (bias_act, dwconv_bias_act, pointwise_conv) is otherwise never run
on an AVX2 / AVX-512 machine."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from effnet_kernels import ops, reference
from helpers import (assert_int8_close, assert_pool_close, check_bias_act, check_dw,
                     check_pw, make_dw_int8)

pytestmark = pytest.mark.skipif(not ops.extension_available(),
                                reason=f"effnet_kernels._C not built: {ops.extension_error()}")

ROOT = Path(__file__).resolve().parents[1]
ACTS = ["silu", "relu6", "relu", "identity"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _C():
    from effnet_kernels import _C

    return _C


# ------------------------------------------------------------------------- kernels, every ISA
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act", ACTS)
def test_bias_act(cpu_isa, poison, act, dtype):
    for shape in [(1, 37, 13, 11), (3, 61, 7, 7), (3, 8, 1, 5), (2, 1152, 1, 1)]:
        check_bias_act("cpu", shape, dtype, act)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act", ACTS)
def test_dwconv_bias_act(cpu_isa, poison, act, dtype):
    for case in [(1, 37, 13, 11, 3, 1, None), (3, 61, 7, 7, 5, 2, None),
                 (3, 37, 1, 1, 3, 1, None), (1, 64, 13, 11, 3, 2, (0, 1, 0, 1)),
                 (1, 24, 9, 8, 7, 2, (3, 3, 2, 3))]:
        for return_pool in (False, True):
            check_dw("cpu", case, dtype, act, return_pool)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act", ACTS)
def test_pointwise_conv(cpu_isa, poison, act, dtype):
    # (N, Cin, Cout, H, W, gate, residual, pool_only)
    for case in [(2, 37, 61, 5, 3, False, False, False), (3, 61, 37, 7, 5, True, True, False),
                 (1, 24, 144, 1, 1, True, True, False), (3, 40, 37, 2, 3, True, True, True),
                 (1, 37, 61, 13, 11, False, False, True)]:
        check_pw("cpu", case, dtype, act)


@pytest.mark.parametrize("act", ACTS)
def test_int8_ops(cpu_isa, poison, act):
    g = torch.Generator().manual_seed(1)
    x, w, sc, b, s, pads = make_dw_int8((3, 61, 13, 11, 3, 2, (0, 1, 0, 1)), g)
    y, pool = torch.ops.effnet.dwconv_int8(x, w, sc, b, s, pads, -128, 7.0, 127, act, True)
    ref_y, ref_pool = reference.dwconv_int8(x, w, sc, b, s, pads, -128, 7.0, 127, act, True)
    assert_int8_close(y, ref_y, act)
    assert_pool_close(pool, ref_pool)
    wp = torch.randint(-127, 128, (37, 61), generator=g, dtype=torch.int8)
    sp, bp = torch.rand(37, generator=g) * 1e-3, torch.randn(37, generator=g)
    gate = torch.rand(3, 61, generator=g)
    res = torch.randint(-128, 128, (3, 37, 7, 6), generator=g, dtype=torch.int8).contiguous(
        memory_format=torch.channels_last)
    args = (x[:, :, :7, :6].contiguous(memory_format=torch.channels_last), wp, sp, bp, 3, 9.0,
            -5, act, gate, res, 0.05, 2)
    assert_int8_close(torch.ops.effnet.pointwise_int8(*args, False),
                        reference.pointwise_int8(*args, False), act)
    xf = torch.randn(3, 37, 13, 11, generator=g).contiguous(memory_format=torch.channels_last)
    assert torch.equal(torch.ops.effnet.quantize_per_tensor(xf, 30.0, -3),
                       reference.quantize_per_tensor(xf, 30.0, -3))


def test_switch_changes_the_code_path():
    """The switch reaches the kernels: the baseline and AVX2 builds of bias_act's float32 SiLU
    round differently (FMA), so on the same data they are not bit-identical. (If the two builds
    are ever made bit-identical, this test must go: it only shows the switch is wired.)"""
    if "avx2" not in _C().cpu_isas():
        pytest.skip("this CPU has no AVX2 build to compare")
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(3, 61, 13, 11, generator=g) * 3).contiguous(memory_format=torch.channels_last)
    b = torch.randn(61, generator=g)
    prev = _C().cpu_isa()
    try:
        _C().set_cpu_isa("baseline")
        y_base = torch.ops.effnet.bias_act(x, b, "silu")
        _C().set_cpu_isa("avx2")
        y_avx2 = torch.ops.effnet.bias_act(x, b, "silu")
    finally:
        _C().set_cpu_isa(prev)
    assert not torch.equal(y_base, y_avx2)
    torch.testing.assert_close(y_base, y_avx2, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------ the switch
def test_set_and_query():
    C = _C()
    isas = C.cpu_isas()
    assert isas[0] == "baseline" and set(isas) <= {"baseline", "avx2", "avx512"}
    prev = C.cpu_isa()
    try:
        for name in isas:
            assert C.set_cpu_isa(name) == name
            assert C.cpu_isa() == name
        assert C.set_cpu_isa("auto") == isas[-1]  # auto: the best level this CPU runs
    finally:
        C.set_cpu_isa(prev)


def test_bad_names_raise():
    C = _C()
    prev = C.cpu_isa()
    with pytest.raises(ValueError, match="unknown CPU ISA 'sse4'"):
        C.set_cpu_isa("sse4")
    with pytest.raises(ValueError, match="unknown CPU ISA"):
        C.set_cpu_isa("AVX2")
    assert C.cpu_isa() == prev  # a failed set changes nothing
    missing = [n for n in ("avx2", "avx512") if n not in C.cpu_isas()]
    for name in missing:
        with pytest.raises(ValueError, match="cannot run"):
            C.set_cpu_isa(name)
    assert C.cpu_isa() == prev


def _run_with_env(value: str, code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, EFFNET_CPU_ISA=value, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_environment_variable():
    """EFFNET_CPU_ISA picks the level; an invalid value is a ValueError naming the variable at
    the first kernel call, and set_cpu_isa still works after it."""
    code = """
import torch
from effnet_kernels import _C
x = torch.randn(1, 3, 2, 2).contiguous(memory_format=torch.channels_last)
try:
    print(_C.cpu_isa())
except ValueError as e:
    print("query:", e)
try:
    torch.ops.effnet.bias_act(x, torch.zeros(3), "relu")
    print("ran")
except ValueError as e:
    print("kernel:", e)
print(_C.set_cpu_isa("baseline"), _C.cpu_isa())
torch.ops.effnet.bias_act(x, torch.zeros(3), "relu")
print("ran")
"""
    r = _run_with_env("baseline", code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["baseline", "ran", "baseline", "baseline", "ran"], r.stdout
    r = _run_with_env("avx9000", code)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("query:") and "EFFNET_CPU_ISA" in lines[0], r.stdout
    assert lines[1].startswith("kernel:") and "unknown CPU ISA 'avx9000'" in lines[1], r.stdout
    assert lines[2:] == ["baseline baseline", "ran"], r.stdout
