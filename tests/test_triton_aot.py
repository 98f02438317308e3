"""benchmarks/triton_aot.py: ahead-of-time compiles of a few kernel configs for sm_90a under the
installed Triton, no GPU needed (only the ptxas bundled with Triton). Runs in subprocesses with
TRITON_INTERPRET unset: under the interpreter (which conftest turns on without a GPU)
@triton.jit builds interpreter objects, which cannot be compiled."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "triton_aot.py"
PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


def _ptxas_works() -> bool:
    try:
        return subprocess.run([str(PTXAS), "--version"], capture_output=True,
                              timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


pytestmark = [pytest.mark.slow,  # subprocesses compiling Triton kernels
              pytest.mark.skipif(not _ptxas_works(),
                                 reason=f"Triton's bundled ptxas ({PTXAS}) is absent or does "
                                 "not run here")]


def _run(args, cwd=ROOT):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


def test_aot_compiles_a_few_configs(tmp_path):
    out = tmp_path / "aot.json"
    p = _run([str(SCRIPT), "--kernel", "bias_act", "--kernel", "pw_int8", "--kernel",
              "quantize", "--limit", "1", "--jobs", "1", "--json", str(out)])
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads(out.read_text())
    assert doc["triton"] == triton.__version__ and doc["target"] == "sm_90a"
    rows = doc["results"]
    assert sorted(r["kernel"] for r in rows) == ["bias_act", "pw_int8", "quantize"]
    for r in rows:
        assert r["status"] == "OK", r
        assert 0 < r["regs"] <= 255 and r["spill_stores"] >= 0 and r["shared"] >= 0, r
    pw = next(r for r in rows if r["kernel"] == "pw_int8")
    assert pw["shared"] > 0  # a pipelined int8 GEMM stages its tiles in shared memory
    assert "OK" in p.stdout and "regs" in p.stdout


def test_aot_reports_a_kernel_that_does_not_compile(tmp_path):
    """A kernel that fails to compile is reported FAIL with the error, and the run exits 1."""
    (tmp_path / "broken_kernel.py").write_text(textwrap.dedent("""
        import triton
        import triton.language as tl

        @triton.jit
        def broken(x_ptr, BLOCK: tl.constexpr):
            tl.store(x_ptr + tl.arange(0, BLOCK), tl.no_such_function(BLOCK))
        """))
    driver = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(tmp_path)!r}, {str(SCRIPT.parent)!r}]
        import triton
        import triton_aot as A
        from broken_kernel import broken
        cs = A.K["quant"].QUANTIZE_CONFIGS._replace(gpu=(triton.Config({{"BLOCK": 64}}),),
                                                    fixed=triton.Config({{"BLOCK": 64}}))
        k = A.Kernel("broken", broken, cs, ("fp32",), lambda dt: dict(x_ptr=A.ptr(dt)),
                     [("", "all", {{}})])
        A.kernels = lambda: [k]
        sys.exit(A.main(["--jobs", "1"]))
        """)
    p = _run(["-c", driver], cwd=tmp_path)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "FAIL" in p.stdout and "no_such_function" in p.stdout, p.stdout
