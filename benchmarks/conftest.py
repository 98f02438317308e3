"""pytest-benchmark suites of effnet_kernels (see benchutil.py for modes and timing).

    pytest benchmarks/ --benchmark-only                  # CPU smoke run without a GPU; full on one
    EFFNET_BENCH_QUICK=1 pytest benchmarks/ --benchmark-only --benchmark-json=out.json
    pytest benchmarks/ --benchmark-only --benchmark-compare   # against the last --benchmark-autosave

``bench_*.py`` files are collected here without ``-o python_files=...``; every case puts its
bytes, FLOPs, GB/s and % of copy bandwidth into the JSON's ``extra_info``, and the device,
versions, commit and measured copy bandwidth into ``machine_info``.
"""

from __future__ import annotations

import fnmatch
import os

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--bench-quick", action="store_true", default=False,
                     help="effnet_kernels benchmarks: quick GPU mode (same as EFFNET_BENCH_QUICK=1)")


def pytest_configure(config):
    if config.getoption("--bench-quick", default=False):
        os.environ["EFFNET_BENCH_QUICK"] = "1"
    if os.environ.get("EFFNET_BENCH_THREADS"):  # CPU threads (a busy shared VM: try 1)
        torch.set_num_threads(int(os.environ["EFFNET_BENCH_THREADS"]))


def pytest_collect_file(file_path, parent):
    """Collect ``bench_*.py`` (pytest's own collector only looks at ``python_files``)."""
    if file_path.suffix != ".py" or not file_path.name.startswith("bench_"):
        return None
    if parent.session.isinitpath(file_path) or any(
            fnmatch.fnmatch(file_path.name, p) for p in parent.config.getini("python_files")):
        return None  # pytest's python plugin collects it already
    return pytest.Module.from_parent(parent, path=file_path)


@pytest.fixture(scope="session", autouse=True)
def _cudnn_benchmark():
    """cuDNN baselines as users tune them: ``torch.backends.cudnn.benchmark = True``."""
    prev = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    yield
    torch.backends.cudnn.benchmark = prev


@pytest.fixture(scope="session")
def gpu_copy_gbps():
    """Device-to-device copy bandwidth of the GPU (GB/s, read + write), measured once."""
    import benchutil

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible")
    return benchutil.copy_gbps("cuda")


@pytest.fixture(scope="session")
def cpu_copy_gbps():
    """Memory copy bandwidth of the CPU (GB/s, read + write), measured once."""
    import benchutil

    return benchutil.copy_gbps("cpu")


def pytest_benchmark_update_machine_info(config, machine_info):
    import benchutil

    from effnet_kernels.bench import environment

    env = environment("cuda" if torch.cuda.is_available() else "cpu")
    machine_info["effnet_kernels"] = {
        **env, "quick": benchutil.quick(), "copy_gbps": dict(benchutil.COPY_GBPS),
        "gpu_l2_bytes": benchutil.l2_bytes(torch.device("cuda")) if torch.cuda.is_available()
        else None}
