"""The machine gpu_check.sh ran on, as JSON on stdout: Python, torch, CUDA, cuDNN, Triton and
nvcc versions, CPU count, and each GPU's properties (name, compute capability, memory, SMs,
L2). Imports nothing of effnet_kernels (it runs before the build)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys


def nvcc_version() -> str | None:
    nvcc = shutil.which("nvcc")
    if not nvcc:
        return None
    r = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30)
    lines = [s for s in r.stdout.splitlines() if "release" in s]
    return lines[-1].strip() if lines else r.stdout.strip()[-200:]


def main() -> int:
    info = {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "nvcc": nvcc_version()}
    try:
        import torch

        info.update(torch=torch.__version__, cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), gpus=[])
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                info["gpus"].append({
                    "name": p.name, "capability": f"{p.major}.{p.minor}",
                    "total_memory_gib": round(p.total_memory / 2**30, 2),
                    "multi_processor_count": p.multi_processor_count,
                    "l2_cache_mib": round(getattr(p, "L2_cache_size", 0) / 2**20, 1)})
        info["device"] = info["gpus"][0]["name"] if info["gpus"] else "cpu"
    except Exception as e:  # noqa: BLE001  (record what is broken; the other steps go on)
        info["torch_error"] = f"{type(e).__name__}: {e}"
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as e:  # noqa: BLE001
        info["triton_error"] = f"{type(e).__name__}: {e}"
    json.dump(info, sys.stdout, indent=1)
    print()
    return 0 if "torch_error" not in info else 1


if __name__ == "__main__":
    sys.exit(main())
