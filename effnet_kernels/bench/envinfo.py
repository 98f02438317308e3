"""Where a benchmark ran: git commit of the measured code, CPU name, versions, threads, and the
result file name derived from them."""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
from pathlib import Path

import torch

__all__ = ["cpu_has_bf16", "cpu_name", "environment", "git_commit", "result_filename"]


def git_commit(root: Path | None = None) -> str:
    """``EFFNET_COMMIT``, else the short commit of the source tree (the package's, else the
    working directory's) + "-dirty" when the code in it — effnet_kernels/, csrc/, setup.py —
    differs from that commit, else "unknown"."""
    env = os.environ.get("EFFNET_COMMIT", "").strip()
    if env:  # "<sha>" or "<sha>-dirty": the sha shortened to 10 hex digits, the suffix kept
        sha, dash, rest = env.partition("-")
        return sha[:10] + dash + rest
    roots = [root] if root else [Path(__file__).resolve().parents[2], Path.cwd()]
    for r in roots:
        try:
            sha = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=r, text=True,
                                 capture_output=True, timeout=10, check=False)
            if sha.returncode != 0:
                continue
            # the measured code: the package and the kernels, untracked files included
            dirty = subprocess.run(["git", "status", "--porcelain", "--", "effnet_kernels",
                                    "csrc", "setup.py"], cwd=r, text=True, capture_output=True,
                                   timeout=10, check=False)
            return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
        except (OSError, subprocess.SubprocessError):
            continue
    return "unknown"


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_has_bf16() -> bool:
    """Whether the CPU has bf16 instructions (AVX512_BF16 or AMX-BF16; Linux /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines()
                  if ln.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _package_version(name: str) -> str | None:
    try:
        mod = __import__(name)
    except ImportError:
        return None
    return getattr(mod, "__version__", "unknown")


def environment(device) -> dict:
    """device, commit, torch, cuda, triton, date, host CPU, threads of this process, and the
    versions of the optional CPU baselines (onnxruntime, openvino; None when not installed)."""
    device = torch.device(device)
    ncpu = os.cpu_count()
    extra = {}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        cap = torch.cuda.get_device_capability(device)
        extra = {"capability": f"{cap[0]}.{cap[1]}",
                 "tf32": {"cudnn": torch.backends.cudnn.allow_tf32,  # torch defaults, as users run
                          "matmul": torch.backends.cuda.matmul.allow_tf32}}
    else:
        name = f"CPU: {cpu_name()} ({ncpu} cores, {torch.get_num_threads()} threads)"
        extra = {"onnxruntime": _package_version("onnxruntime"),
                 "openvino": _package_version("openvino")}
    return {**extra, "device": name, "device_type": device.type, "commit": git_commit(),
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "triton": _package_version("triton"), "date": datetime.date.today().isoformat(),
            "host_cpu": cpu_name(), "cpu_count": ncpu, "threads": torch.get_num_threads(),
            "python": platform.python_version()}


def _slug(s: str) -> str:
    s = re.sub(r"^(nvidia|amd)\s+", "", s.strip(), flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")


def result_filename(env: dict) -> str:
    """``YYYY-MM-DD-<gpu>-<commit>.json``; CPU runs are named ``...-cpu<cores>-<commit>.json``."""
    dev = (_slug(env["device"]) if env.get("device_type") == "cuda"
           else f"cpu{env.get('cpu_count') or ''}")
    return f"{env['date']}-{dev}-{env['commit']}.json"
