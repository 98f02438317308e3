"""The compiled core and build_info() (the GPU check script: test_gpu_check.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import effnet_kernels as ek
from effnet_kernels import ops

ROOT = Path(__file__).resolve().parents[1]


def test_build_info_keys_and_types():
    info = ek.build_info()
    for key in ("version", "extension", "has_cuda", "cuda_version", "archs", "torch_version",
                "torch_runtime", "backends"):
        assert key in info, key
    assert info["version"] == ek.__version__
    assert info["torch_runtime"] == torch.__version__
    assert info["backends"]["cpu"][-1] == "torch"
    if info["has_cuda"]:
        major, minor = info["cuda_version"].split(".")
        assert int(major) >= 11 and minor.isdigit()
        assert info["archs"]
    else:
        assert info["cuda_version"] == ""


@pytest.mark.skipif(os.environ.get("CI") != "true", reason="CI builds the extension; a dev "
                    "checkout may not have")
def test_ci_has_the_compiled_cuda_core():
    info = ek.build_info()
    assert info["extension"], info["extension_error"]
    assert info["has_cuda"]
    assert info["torch_version"] == torch.__version__


@pytest.mark.skipif(not ops.extension_available(), reason="effnet_kernels._C not built")
def test_ops_registered_in_dispatcher():
    schema = str(torch.ops.effnet.bias_act.default._schema)
    assert schema.startswith("effnet::bias_act(Tensor x, Tensor bias, str act) -> Tensor")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("effnet::bias_act", "CPU")
    if ek.build_info()["has_cuda"]:
        assert torch._C._dispatch_has_kernel_for_dispatch_key("effnet::bias_act", "CUDA")


@pytest.mark.slow
def test_cli_info_runs():
    r = subprocess.run([sys.executable, "-P", "-m", "effnet_kernels", "info"], capture_output=True,
                       text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "effnet_kernels" in r.stdout and "CPU backends" in r.stdout
