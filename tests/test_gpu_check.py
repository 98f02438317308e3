"""benchmarks/gpu_check.sh in --rehearse mode (the same step machinery as on the GPU machine):
the deadline holds when a step hangs, the summary lists every step, the output folder fits what
the device tool brings back (<= 8 files of <= 16 MiB, <= 2 folders deep), and a whole
rehearsal passes."""

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STEPS = ["env", "build", "smoke", "sanitizer_memcheck", "sanitizer_racecheck", "tests",
         "bench_model", "bench_dwconv", "bench_int8", "bench_train", "bench_compile",
         "bench_b4", "bench_autotune"]


def run_check(out: Path, timeout: float, **env) -> tuple[subprocess.CompletedProcess, float]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("EFFNET_")}
    e.update(PYTHON=sys.executable, **env)
    t0 = time.monotonic()
    r = subprocess.run(["bash", str(SCRIPT), str(out), "--rehearse"], capture_output=True,
                       text=True, timeout=timeout, env=e, cwd=ROOT)
    return r, time.monotonic() - t0


def check_out_dir(out: Path) -> dict:
    """What comes back from the device machine: <= 6 plain files (the tool takes 8) of
    <= 16 MiB, nothing deeper; returns summary.json."""
    entries = list(out.rglob("*"))
    assert all(p.is_file() and p.parent == out for p in entries), entries
    assert {"summary.json", "logs.tar.gz"} <= {p.name for p in entries}
    assert len(entries) <= 6, sorted(p.name for p in entries)
    assert all(p.stat().st_size <= 16 << 20 for p in entries)
    summary = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in summary["steps"]] == STEPS
    for s in summary["steps"]:
        assert isinstance(s["seconds"], float) and s["status"] != "pending", s
        if s["skipped"]:
            assert s["rc"] is None and s["reason"], s
        else:
            assert isinstance(s["rc"], int) and s["limit_s"] >= 1, s
    assert summary["finished"] and summary["mode"] == "rehearse"
    return summary


@pytest.mark.slow
def test_hung_step_ends_by_the_deadline(tmp_path):
    deadline = 50
    r, wall = run_check(tmp_path, 120, EFFNET_GPU_CHECK_DEADLINE=str(deadline),
                        EFFNET_GPU_CHECK_INJECT_HANG="smoke",
                        EFFNET_COMMIT="0123456789abcdef-dirty")
    assert wall <= deadline + 5, (wall, r.stdout[-3000:])
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]  # a step failed: smoke
    s = check_out_dir(tmp_path)
    steps = {x["name"]: x for x in s["steps"]}
    assert steps["env"]["status"] == steps["build"]["status"] == "ok", s
    smoke = steps["smoke"]
    assert smoke["timed_out"] and smoke["rc"] in (124, 137) and smoke["status"] == "timed_out"
    assert smoke["seconds"] <= smoke["limit_s"] + 6, smoke
    assert s["failed"] == ["smoke"]
    assert steps["sanitizer_racecheck"]["reason"].startswith("rehearsal")
    assert any("not enough time" in (x["reason"] or "") for x in s["steps"])
    assert (s["commit"], s["dirty"], s["commit_source"]) == ("0123456789abcdef", True, "env")
    assert s["deadline_s"] == deadline and s["elapsed_s"] <= deadline + 1
    with tarfile.open(tmp_path / "logs.tar.gz") as tar:
        log = tar.extractfile("./smoke.log").read().decode()
    assert "hanging" in log


@pytest.mark.slow
def test_failed_build_skips_the_rest(tmp_path):
    """The build did not run (budget 0): every later step is recorded as skipped, and the
    commit comes from git (or the commit file, when one is there)."""
    r, _ = run_check(tmp_path, 120, EFFNET_GPU_CHECK_BUDGET_BUILD="0")
    s = check_out_dir(tmp_path)
    steps = {x["name"]: x for x in s["steps"]}
    assert steps["build"]["skipped"] and steps["build"]["reason"] == \
        "EFFNET_GPU_CHECK_BUDGET_BUILD=0"
    for name in STEPS[2:]:
        assert steps[name]["skipped"] and steps[name]["reason"] == "the build did not run"
    commit_file = ROOT / "benchmarks" / ".gpu_check_commit"
    if s["commit_source"] == "git":
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=ROOT).stdout.strip()
        assert s["commit"] == head and s["dirty"] in (True, False)
    else:
        assert s["commit_source"] == ("file" if commit_file.exists() else "none")
    assert r.returncode == 1, r.stdout[-3000:]  # no build: the check failed


@pytest.mark.slow
def test_bad_arguments(tmp_path):
    r = subprocess.run(["bash", str(SCRIPT), str(tmp_path), "--dry-run"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and "usage" in r.stderr
    r = subprocess.run(["bash", str(SCRIPT), str(tmp_path)], capture_output=True, text=True,
                       timeout=30, env={**os.environ, "EFFNET_GPU_CHECK_DEADLINE": "soon"})
    assert r.returncode == 2 and "seconds" in r.stderr


@pytest.mark.slow
def test_full_rehearsal(tmp_path):
    """Every step runs or is skipped for a stated reason; smoke passes on cpu / torch / the
    interpreted triton. bench_b4 is left out (budget 0) to keep this under ~3 minutes."""
    r, wall = run_check(tmp_path, 400, EFFNET_GPU_CHECK_DEADLINE="300",
                        EFFNET_GPU_CHECK_BUDGET_BENCH_B4="0")
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-3000:]
    s = check_out_dir(tmp_path)
    assert s["failed"] == []
    for x in s["steps"]:
        assert x["status"] == "ok" or x["reason"].startswith(("rehearsal", "EFFNET_GPU")), x
    assert {p.name for p in tmp_path.iterdir()} == {
        "summary.json", "logs.tar.gz", "smoke.json", "junit.xml", "bench_model.json",
        "bench_kernels.json"}
    smoke = json.loads((tmp_path / "smoke.json").read_text())
    res = smoke["results"]
    assert smoke["failed"] == 0 and len(res) == 3 * (4 * 2 + 3)
    for r_ in res:  # every op has a C++ CPU kernel, the reference and a Triton kernel
        assert r_["status"] == "PASS", r_
    assert [m["status"] for m in smoke["model"]] == ["PASS"] * 4 + ["skipped"] * 2
    with tarfile.open(tmp_path / "logs.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"./bench_int8.json", "./bench_train.json", "./sanitizer_memcheck.log",
            "./env.json"} <= names
