"""Test setup: Triton runs through its interpreter when there is no GPU, CUDA tests skip without
one, and ``poison`` makes every freshly allocated tensor NaN so an unwritten output fails."""

import glob
import os
import sys
from pathlib import Path

import torch

# The suite tests the tree it sits in: this checkout's effnet_kernels goes first on sys.path (an
# editable install, scripts/install.sh, points there anyway; a git worktree or a second clone
# would otherwise import some other installed copy).
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Must happen before triton is imported anywhere.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
else:  # one config per Triton kernel (tests/test_dwconv_triton.py forces each config in turn)
    os.environ.setdefault("EFFNET_TRITON_AUTOTUNE", "0")

import pytest  # noqa: E402

import effnet_kernels  # noqa: E402

if Path(effnet_kernels.__file__).resolve().parent != ROOT / "effnet_kernels":
    raise pytest.UsageError(f"tests in {ROOT} imported effnet_kernels from "
                            f"{effnet_kernels.__file__}, not from this tree")
if not glob.glob(str(ROOT / "effnet_kernels" / "_C*.so")) and \
        os.environ.get("EFFNET_TEST_WITHOUT_EXTENSION") != "1":
    raise pytest.UsageError(
        f"{ROOT}/effnet_kernels has no compiled core (_C*.so): build it in place with "
        "`pip install --no-build-isolation -e .` (scripts/install.sh does) or `python setup.py "
        "build_ext --inplace`; EFFNET_TEST_WITHOUT_EXTENSION=1 runs the suite without it")

HAS_GPU = torch.cuda.is_available()  # (tests import it, and the rest, from helpers.py)


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible: torch.cuda.is_available() "
                            "is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def poison():
    """Every torch.empty* (Python or C++ at::empty) returns NaN-filled memory while active."""
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev)


def _cpu_isas() -> list:
    """The CPU ISA levels this machine runs (effnet_kernels._C.cpu_isas()), [] without _C."""
    try:
        from effnet_kernels import _C
    except ImportError:
        return []
    return list(_C.cpu_isas()) if hasattr(_C, "cpu_isas") else []


def _at_isa(level, why_none: str):
    """Sets the CPU ISA level for a test (effnet_kernels._C.set_cpu_isa), then restores it;
    skips with `why_none` when the level is None."""
    if level is None:
        pytest.skip(why_none)
    from effnet_kernels import _C

    prev = _C.cpu_isa()
    _C.set_cpu_isa(level)
    try:
        yield level
    finally:
        _C.set_cpu_isa(prev)


@pytest.fixture(params=_cpu_isas() or [None])
def cpu_isa(request):
    """Runs the test once per CPU ISA level this machine runs ('baseline', 'avx2', 'avx512':
    which build of the CPU kernels runs), then restores the previous level."""
    yield from _at_isa(request.param, "effnet_kernels._C not built (no CPU ISA switch)")


@pytest.fixture(params=[i for i in ("avx512", "avx2") if i in _cpu_isas()] or [None])
def engine_isa(request):
    """Runs the test once per CPU engine build this machine runs (the float engine's AVX-512
    and AVX2 kernels: an AVX-512 machine tests both); models built inside get that build."""
    yield from _at_isa(request.param, "no CPU engine build for this CPU")
