"""Compile every Triton kernel configuration of the project ahead of time for sm_90a, no GPU.

Usage: python benchmarks/triton_aot.py [--kernel NAME ...] [--full] [--jobs N] [--json PATH]
                                       [--limit N] [--list]

What is compiled: for each kernel (bias_act, dwconv, se, pointwise, pw_int8, dw_int8,
quantize, and the training kernels of triton/train.py: train_bn_act_apply / _backward,
train_dw_fwd / _dx / _dw, in fp32 and bf16), each dtype its launcher accepts (fp32 / fp16 / bf16, or int8), and each
*variant* (one set of the launcher's constexpr specialisations on an example problem: act,
k, stride, padding, pool on/off, gate / zero point / residual on/off, int64 offsets), the
configs taken from the kernel module's own ``ConfigSet`` (``gpu`` autotune list + the
EFFNET_TRITON_AUTOTUNE=0 ``fixed`` one). Variants marked "all" are compiled with every config
the autotuner's early prune keeps for their example problem, the others with the fixed config
only (the one GPU tests run); ``--full`` compiles every variant with every kept config. The
script checks that every autotune config is compiled at least once per dtype.

How: the arguments' types and divisibility attributes come from Triton's own specialisation
of example values (``native_specialize_impl``, as the JIT launcher does: pointers 16-byte
aligned, integers divisible by 16 marked so, an integer 1 becomes a constant), then
``triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", 90,
32), options=...)`` down to a cubin through the ptxas bundled with Triton. Registers and spills
come from ptxas's ``-v`` log (``knobs.nvidia.dump_ptxas_log``; a private Triton cache directory
makes every compile run ptxas), shared memory from the compiled kernel's metadata. Tested with
Triton 3.6.0 and 3.8.0, whose ASTSource / compile / GPUTarget APIs are the same for this use
(string signature keys, constexprs keyed by name, attrs keyed by argument index path).

Imports: only the kernel modules (effnet_kernels/triton/*), not the effnet_kernels package
(torch and the C++ core); where torch is not installed a placeholder module stands in for it,
since the kernel modules use torch only inside their launchers, which are never called here.
TRITON_INTERPRET is removed from the environment first (under it @triton.jit builds interpreter
objects, which cannot be compiled).

Output: one line per compile (kernel, variant, dtype, config, OK/FAIL, registers, spill
stores / loads, shared memory, seconds) and a summary; --json writes the same as
{"triton", "target", "results": [...]}. Exit status 1 if any compile failed, 2 on a usage error.

Result cache (``--cache``, default ~/.cache/effnet_kernels/triton_aot): a successful compile's
row is stored under a key of the Triton version, every kernel source file and the job itself, so
a rerun (CI) recompiles only what changed; ``--no-cache`` compiles everything.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import hashlib
import functools
import importlib
import io
import json
import os
import re
import sys
import tempfile
import time
import types
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # before triton is imported anywhere
ROOT = Path(__file__).resolve().parents[1]
ARCH = 90
DEFAULT_CACHE = (Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                 / "effnet_kernels" / "triton_aot")
SMEM_MAX = 232448  # bytes of shared memory one block may use on sm_90 (227 KB)
DTYPES = ("fp32", "fp16", "bf16")


def _import_kernels():
    """The kernel modules, imported without effnet_kernels/__init__.py (and, where torch is not
    installed, with a placeholder torch: it is only used inside the launchers)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        sys.modules["torch"] = types.ModuleType("torch")
    pkg = types.ModuleType("effnet_kernels")
    pkg.__path__ = [str(ROOT / "effnet_kernels")]
    sys.modules.setdefault("effnet_kernels", pkg)
    names = ("bias_act", "dwconv", "se", "pointwise", "quant", "train")
    return {n: importlib.import_module(f"effnet_kernels.triton.{n}") for n in names}


import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton import knobs  # noqa: E402
from triton._C.libtriton import native_specialize_impl  # noqa: E402
from triton.backends.compiler import BaseBackend, GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction, MockTensor  # noqa: E402

K = _import_kernels()
TARGET = GPUTarget("cuda", ARCH, 32)
TL = {"fp32": tl.float32, "fp16": tl.float16, "bf16": tl.bfloat16, "int8": tl.int8,
      "int32": tl.int32}


def ptr(dtype: str):
    """An example pointer argument of element type ``dtype`` (16-byte aligned, as torch's)."""
    return MockTensor(TL[dtype])


# ----------------------------------------------------------------------------- kernel specs
class Kernel:
    """One kernel: its jit function, ConfigSet, early prune, dtypes, launch options, and
    ``args(dtype, **problem)`` → the full argument dict of one launch (runtime and constexpr
    arguments by name, tile sizes excluded) mirroring its launcher."""

    def __init__(self, name, fn, configs, dtypes, args, variants, prune=None, options=None):
        self.name, self.configs, self.dtypes = name, configs, dtypes
        while not isinstance(fn, JITFunction):  # an Autotuner wraps the JITFunction
            fn = fn.fn
        self.fn, self.args, self.variants = fn, args, variants
        self.prune, self.options = prune, options or {}


def _act(v):
    return K["bias_act"].ACT_CODES[v]


def bias_act_args(dt, act="silu", R=8 * 112 * 112, C=96):
    return dict(x_ptr=ptr(dt), b_ptr=ptr(dt), y_ptr=ptr(dt), R=R, C=C, ACT=_act(act))


def _dw_geometry(H, k, s, pads):
    left, right, top, bottom = pads
    return (H + top + bottom - k) // s + 1, (H + left + right - k) // s + 1


def _dw_common(H, C, k, s, pads, pool, i64, cfgs):
    Ho, Wo = _dw_geometry(H, k, s, pads)
    tiles = max(triton.cdiv(Ho, c.kwargs["BLOCK_H"]) * triton.cdiv(Wo, c.kwargs["BLOCK_W"])
                for c in cfgs)
    return dict(H=H, W=H, C=C, Ho=Ho, Wo=Wo, ws_stride_n=tiles * C, inv_hw=1.0 / (Ho * Wo),
                K=k, S=s, PAD_T=pads[2], PAD_L=pads[0], POOL=pool, I64=i64)


def dwconv_args(dt, act="silu", H=56, C=144, k=3, s=1, pads=(1, 1, 1, 1), pool=True, i64=False):
    a = _dw_common(H, C, k, s, pads, pool, i64, K["dwconv"].CONFIGS.compiled())
    return dict(x_ptr=ptr(dt), w_ptr=ptr(dt), b_ptr=ptr(dt), y_ptr=ptr(dt),
                ws_ptr=ptr("fp32" if pool else dt), ACT=_act(act), **a)


def dw_int8_args(dt, act="silu", H=56, C=144, k=3, s=1, pads=(1, 1, 1, 1), pool=True,
                 i64=False):
    a = _dw_common(H, C, k, s, pads, pool, i64, K["quant"].DW_CONFIGS.compiled())
    return dict(x_ptr=ptr("int8"), w_ptr=ptr("int8"), s_ptr=ptr("fp32"), b_ptr=ptr("fp32"),
                y_ptr=ptr("int8"), ws_ptr=ptr("fp32" if pool else "int8"), in_zp=-3,
                out_inv_scale=20.0, out_zp=5, ACT=_act(act), **a)


def se_args(dt, N=64, C=1152, S=48):
    return dict(p_ptr=ptr("fp32"), w1_ptr=ptr(dt), b1_ptr=ptr(dt), w2_ptr=ptr(dt),
                b2_ptr=ptr(dt), g_ptr=ptr("fp32"), N=N, C=C, S=S, stride_pn=C, stride_pc=1,
                stride_w1s=C, stride_w1c=1, stride_w2c=S, stride_w2s=1,
                N_BUCKET=min(triton.next_power_of_2(N), 256),
                BLOCK_S=triton.next_power_of_2(S))


def _gemm_common(M, HW, Cin, Cout, gate, pool, cfgs, pw):
    slots = pw.slots(HW, min(c.kwargs["BLOCK_M"] for c in cfgs))
    gs = Cin if gate else 0
    return dict(M=M, Cin=Cin, Cout=Cout, HW=HW, stride_wn=Cin, stride_wk=1, stride_gn=gs,
                stride_gk=1 if gate else 0, ws_slots=slots, inv_hw=1.0 / HW,
                M_BUCKET=triton.next_power_of_2(M), DIV_K=pw.pow2_divisor(Cin, Cin, gs),
                DIV_N=pw.pow2_divisor(Cout), HAS_GATE=gate, POOL=pool)


def pointwise_args(dt, act="silu", M=128 * 49, HW=49, Cin=1152, Cout=320, gate=True, res=True,
                   pool=False):
    pw = K["pointwise"]
    a = _gemm_common(M, HW, Cin, Cout, gate, pool, pw.CONFIGS.compiled(), pw)
    return dict(x_ptr=ptr(dt), w_ptr=ptr(dt), b_ptr=ptr(dt), g_ptr=ptr("fp32" if gate else dt),
                r_ptr=ptr(dt), y_ptr=ptr("fp32" if pool else dt),
                ws_ptr=ptr("fp32" if pool else dt), ACT=_act(act), HAS_RES=res,
                DOT_F32=dt == "fp32", **a)


def pw_int8_args(dt, act="silu", M=128 * 49, HW=49, Cin=1152, Cout=320, gate=True, zp=True,
                 res=True, pool=False):
    a = _gemm_common(M, HW, Cin, Cout, gate, pool, K["quant"].PW_CONFIGS.compiled(),
                     K["pointwise"])
    return dict(x_ptr=ptr("int8"), w_ptr=ptr("int8"), wsum_ptr=ptr("int32" if zp else "fp32"),
                s_ptr=ptr("fp32"), b_ptr=ptr("fp32"), g_ptr=ptr("fp32" if gate else "int8"),
                r_ptr=ptr("int8"), y_ptr=ptr("fp32" if pool else "int8"),
                ws_ptr=ptr("fp32" if pool else "int8"), in_zp=-3 if zp else 0,
                out_inv_scale=20.0, out_zp=5, res_scale=0.05, res_zp=-7, ACT=_act(act),
                HAS_ZP=zp, HAS_RES=res, **a)


def quantize_args(dt, numel=8 * 32 * 112 * 112):
    return dict(x_ptr=ptr(dt), y_ptr=ptr("int8"), numel=numel, inv_scale=20.0, zp=5)


def train_bn_act_args(dt, act="silu", HW=56 * 56, C=144, gate=True, backward=False):
    t = K["train"]
    n_rt = triton.cdiv(HW, max(c.kwargs["BLOCK_R"] for c in t.CONFIGS.compiled()))
    a = dict(x_ptr=ptr(dt), mean_ptr=ptr("fp32"), scale_ptr=ptr("fp32"), shift_ptr=ptr("fp32"),
             gate_ptr=ptr("fp32"), HW=HW, C=C, n_rt=n_rt, ACT=_act(act), HAS_GATE=gate)
    if backward:
        return dict(a, dy_ptr=ptr(dt), dx_ptr=ptr(dt), part_ptr=ptr("fp32"))
    return dict(a, y_ptr=ptr("fp32"))


def train_dw_args(dt, which="fwd", act="silu", H=56, C=144, k=3, s=1, pads=(1, 1, 1, 1),
                  bn=True):
    """The three kernels of the training depthwise (triton/train.py): fwd, dx, dw."""
    OH, OW = _dw_geometry(H, k, s, pads)
    bp = min(c.kwargs["BLOCK_P"] for c in K["train"].DW_CONFIGS.compiled())
    a = dict(x_ptr=ptr(dt), scale_ptr=ptr("fp32"), shift_ptr=ptr("fp32"), H=H, W=H, C=C, OH=OH,
             OW=OW, n_pt=triton.cdiv((H * H if which == "dx" else OH * OW), bp), stride=s,
             pt=pads[2], pl=pads[0], K=k, ACT=_act(act), BN=bn)
    if which == "fwd":
        return dict(a, w_ptr=ptr("fp32"), z_ptr=ptr(dt))
    if which == "dx":
        return dict(a, dz_ptr=ptr(dt), w_ptr=ptr("fp32"), mean_ptr=ptr("fp32"), dx_ptr=ptr(dt),
                    part_ptr=ptr("fp32"))
    return dict(a, dz_ptr=ptr(dt), part_ptr=ptr("fp32"))


ACTS = [(f"act={a}", "fixed", dict(act=a)) for a in ("identity", "relu", "relu6")]
TRAIN_BN_VARIANTS = [("silu gate", "all", {}), ("relu6 no gate", "fixed",
                                                dict(act="relu6", gate=False))]
TRAIN_DW_VARIANTS = [("k3s1 silu bn", "all", {}),
                     ("k5s2 relu6 bn", "fixed", dict(act="relu6", k=5, s=2, pads=(1, 2, 1, 2))),
                     ("k3s2 no bn", "fixed", dict(k=3, s=2, pads=(0, 1, 0, 1), bn=False))]
TRAIN_DTYPES = ("fp32", "bf16")  # fp16 runs the same code as bf16 (float32 math after the load)
DW_VARIANTS = [  # (name, tier, problem): tier "all" = every config, "fixed" = the fixed one
    ("k3s1 silu pool", "all", {}),
    ("k5s2 silu pool", "all", dict(k=5, s=2, pads=(1, 2, 1, 2))),
    ("k3s2", "fixed", dict(k=3, s=2, pads=(0, 1, 0, 1), pool=False)),
    ("k5s1", "fixed", dict(k=5, s=1, pads=(2, 2, 2, 2))),
    ("k9s1 (runtime kh loop)", "fixed", dict(k=9, s=1, pads=(4, 4, 4, 4))),
    ("k3s1 int64 offsets", "fixed", dict(i64=True)),
    ("k3s1 no pool", "fixed", dict(pool=False)),
    *ACTS,
]
PW_VARIANTS = [
    ("gate+res (project)", "all", {}),
    ("pool_only (head)", "all", dict(Cin=320, Cout=1280, gate=False, res=False, pool=True)),
    ("plain (expand)", "fixed", dict(Cin=40, Cout=240, gate=False, res=False)),
    ("gate", "fixed", dict(res=False)),
    ("gate+res+pool", "fixed", dict(pool=True)),
    ("Cin37 Cout61 (unaligned)", "fixed", dict(Cin=37, Cout=61, M=8 * 100, HW=100)),
    *ACTS,
]
PW8_VARIANTS = [
    ("gate+zp+res (project)", "all", {}),
    ("pool_only (head)", "all",
     dict(Cin=320, Cout=1280, gate=False, zp=False, res=False, pool=True)),
    ("plain (expand)", "fixed", dict(Cin=40, Cout=240, gate=False, zp=False, res=False)),
    ("gate, zp 0", "fixed", dict(zp=False, res=False)),
    ("gate+zp+res+pool", "fixed", dict(pool=True)),
    ("Cin37 Cout61 (unaligned)", "fixed", dict(Cin=37, Cout=61, M=8 * 100, HW=100)),
    *ACTS,
]


def kernels():
    q, t = K["quant"], K["train"]
    no_fma = dict(enable_fp_fusion=False)
    return [
        Kernel("bias_act", K["bias_act"]._bias_act_kernel, K["bias_act"].CONFIGS, DTYPES,
               bias_act_args, [("silu", "all", {}), *ACTS]),
        Kernel("dwconv", K["dwconv"]._dwconv_fwd_kernel, K["dwconv"].CONFIGS, DTYPES,
               dwconv_args, DW_VARIANTS, prune=K["dwconv"]._prune_configs),
        Kernel("se", K["se"]._se_gate_kernel, K["se"].CONFIGS, DTYPES, se_args,
               [("C1152 S48", "all", {}), ("C3840 S160 (BLOCK_S 256)", "all",
                                              dict(C=3840, S=160, N=256)),
                ("batch 1, C96 S4", "all", dict(N=1, C=96, S=4))],
               prune=K["se"]._prune_configs),
        Kernel("pointwise", K["pointwise"]._pointwise_kernel, K["pointwise"].CONFIGS, DTYPES,
               pointwise_args, PW_VARIANTS, prune=K["pointwise"]._prune_configs),
        Kernel("pw_int8", q._pw_int8_kernel, q.PW_CONFIGS, ("int8",), pw_int8_args,
               PW8_VARIANTS, prune=q._pw_prune_configs, options=no_fma),
        Kernel("dw_int8", q._dw_int8_kernel, q.DW_CONFIGS, ("int8",), dw_int8_args,
               DW_VARIANTS, prune=K["dwconv"]._prune_configs, options=no_fma),
        Kernel("quantize", q._quantize_kernel, q.QUANTIZE_CONFIGS, DTYPES, quantize_args,
               [("", "all", {})], options=no_fma),
        # training (never run on a GPU: compiled here so that they at least compile)
        Kernel("train_bn_act_apply", t._bn_act_apply_kernel, t.CONFIGS, TRAIN_DTYPES,
               train_bn_act_args, TRAIN_BN_VARIANTS),
        Kernel("train_bn_act_backward", t._bn_act_backward_kernel, t.CONFIGS, TRAIN_DTYPES,
               functools.partial(train_bn_act_args, backward=True), TRAIN_BN_VARIANTS),
        *(Kernel(f"train_dw_{w}", fn, t.DW_CONFIGS, TRAIN_DTYPES,
                 functools.partial(train_dw_args, which=w), TRAIN_DW_VARIANTS)
          for w, fn in (("fwd", t._dw_fwd_kernel), ("dx", t._dw_dx_kernel),
                        ("dw", t._dw_dw_kernel))),
    ]


# ----------------------------------------------------------------------------- compile
def config_str(c) -> str:
    blocks = "x".join(str(v) for k, v in c.kwargs.items() if k.startswith("BLOCK"))
    return f"{blocks} w{c.num_warps} s{c.num_stages}"


def jobs(selected, full: bool):
    """(kernel, variant name, dtype, config, args) for every compile to run."""
    out, missing = [], []
    for k in selected:
        everything = k.configs.compiled()
        for dt in k.dtypes:
            covered = set()
            for name, tier, problem in k.variants:
                args = k.args(dt, **problem)
                cfgs = everything
                if tier == "fixed" and not full:
                    cfgs = [k.configs.fixed]
                elif k.prune is not None:
                    cfgs = k.prune(everything, args)
                for c in cfgs:
                    covered.add(config_str(c))
                    out.append((k, name, dt, c, args))
            missing += [f"{k.name} {dt} {config_str(c)}" for c in everything
                        if config_str(c) not in covered]
    return out, missing


def specialise(fn, args: dict):
    """signature, constexprs and attrs of one launch, as Triton's JIT derives them."""
    sig, consts, attrs = {}, {}, {}
    for i, p in enumerate(fn.params):
        if p.name not in args:
            raise KeyError(f"{fn.__name__}: no example value for argument {p.name!r}")
        v = args[p.name]
        if p.is_constexpr:
            sig[p.name], consts[p.name] = "constexpr", v
            continue
        ty, spec = native_specialize_impl(BaseBackend, v, False, True, True)
        sig[p.name] = ty
        if ty == "constexpr":  # an integer 1: the JIT makes it a constant
            consts[p.name] = spec
        elif isinstance(spec, str) and spec:
            attrs[(i,)] = BaseBackend.parse_attr(spec)
    extra = set(args) - {p.name for p in fn.params}
    if extra:
        raise KeyError(f"{fn.__name__}: example arguments it does not take: {sorted(extra)}")
    return sig, consts, attrs


_PTXAS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"
                    r"|Used (\d+) registers")


def compile_one(job) -> dict:
    k, variant, dt, c, args = job
    row = dict(kernel=k.name, variant=variant, dtype=dt, config=config_str(c),
               num_warps=c.num_warps, num_stages=c.num_stages, **{f"{n}": v for n, v in
                                                                   c.kwargs.items()})
    t0 = time.time()
    log = io.StringIO()
    try:
        sig, consts, attrs = specialise(k.fn, {**args, **c.kwargs})
        opts = dict(num_warps=c.num_warps, num_stages=c.num_stages, num_ctas=c.num_ctas,
                    **k.options)
        with contextlib.redirect_stdout(log):
            ck = triton.compile(ASTSource(k.fn, sig, consts, attrs), target=TARGET,
                                options=opts)
        row.update(status="OK", shared=ck.metadata.shared, regs=None, spill_stores=None,
                   spill_loads=None, stack=None)
        for m in _PTXAS.finditer(log.getvalue()):
            if m.group(4):
                row["regs"] = int(m.group(4))
            else:
                row["stack"], row["spill_stores"], row["spill_loads"] = map(int, m.group(1, 2, 3))
        if row["regs"] is None:
            row.update(status="FAIL", error="no ptxas -v log (was the cubin taken from a cache?)")
        elif row["shared"] > SMEM_MAX:
            row["warning"] = f"shared memory {row['shared']} B > {SMEM_MAX} B: cannot launch"
    except Exception as e:  # noqa: BLE001 - every failure is reported, none stops the run
        msg = f"{type(e).__name__}: {e}"
        row.update(status="FAIL", error=msg[:4000])
    row["seconds"] = round(time.time() - t0, 2)
    return row


def _worker(i):
    return compile_one(_JOBS[i])


# ----------------------------------------------------------------------------- result cache
def _sources_digest() -> str:
    """The Triton version, this script and every kernel source: a cached result is reused only
    while all are unchanged (a compile depends on nothing else but the job itself)."""
    h = hashlib.sha256(triton.__version__.encode() + Path(__file__).read_bytes())
    for f in sorted((ROOT / "effnet_kernels" / "triton").glob("*.py")):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def _stable(v) -> str:
    """An example argument as text without object addresses (a mock tensor is its dtype)."""
    return f"tensor[{v.dtype}]" if isinstance(v, MockTensor) else repr(v)


def job_key(job, digest: str) -> str:
    k, variant, dt, c, args = job
    spec = (k.name, variant, dt, sorted(c.kwargs.items()), c.num_warps, c.num_stages,
            c.num_ctas, sorted((n, _stable(v)) for n, v in args.items()),
            sorted(k.options.items()))
    return hashlib.sha256((digest + repr(spec)).encode()).hexdigest()[:32]


def cached_rows(todo, cache_dir: Path | None):
    """(rows found in the cache by job index, the jobs still to compile with their indices)."""
    if cache_dir is None:
        return {}, list(enumerate(todo))
    digest, hits, rest = _sources_digest(), {}, []
    for i, job in enumerate(todo):
        f = cache_dir / f"{job_key(job, digest)}.json"
        if f.is_file():
            hits[i] = dict(json.loads(f.read_text()), cached=True)
        else:
            rest.append((i, job))
    return hits, rest


def store_rows(rows, todo, cache_dir: Path | None) -> None:
    if cache_dir is None:
        return
    cache_dir.mkdir(parents=True, exist_ok=True)
    digest = _sources_digest()
    for row, job in zip(rows, todo, strict=True):
        if row["status"] == "OK" and not row.get("cached"):  # failures always run again
            (cache_dir / f"{job_key(job, digest)}.json").write_text(json.dumps(row))


_JOBS = []


def run(jobs_, n_jobs: int, on_row):
    """Compile every job (n_jobs processes), calling on_row(row) as each finishes."""
    _JOBS[:] = jobs_
    rows = [None] * len(jobs_)
    if n_jobs <= 1:
        for i in range(len(jobs_)):
            rows[i] = _worker(i)
            on_row(rows[i])
        return rows
    import multiprocessing as mp
    with cf.ProcessPoolExecutor(n_jobs, mp_context=mp.get_context("fork")) as ex:
        futs = {ex.submit(_worker, i): i for i in range(len(jobs_))}
        for f in cf.as_completed(futs):
            rows[futs[f]] = f.result()
            on_row(rows[futs[f]])
    return rows


def fmt(row) -> str:
    def n(key):
        v = row.get(key)
        return "-" if v is None else str(v)
    head = (f"{row['kernel']:<9} {row['variant'][:26]:<26} {row['dtype']:<4} "
            f"{row['config']:<18} {row['status']:<4}")
    if row["status"] != "OK":
        return f"{head} {row['error'].splitlines()[0][:200]}"
    warn = f"  ! {row['warning']}" if row.get("warning") else ""
    return (f"{head} regs {n('regs'):>3}  spill {n('spill_stores'):>4}/{n('spill_loads'):<4} "
            f"smem {n('shared'):>6}  {row['seconds']:5.1f}s{warn}")


def main(argv=None) -> int:
    ks = kernels()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernel", action="append", choices=[k.name for k in ks],
                    help="only these kernels (repeatable; default all)")
    ap.add_argument("--full", action="store_true",
                    help="every variant with every config (default: 'fixed' variants only "
                         "with the fixed config)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile processes")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--limit", type=int, help="only the first N compiles of each kernel (quick "
                    "checks)")
    ap.add_argument("--list", action="store_true", help="list the compiles, run none")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                    help="reuse the results of compiles whose kernel sources and Triton version "
                         f"are unchanged (default {DEFAULT_CACHE}); --no-cache compiles all")
    ap.add_argument("--no-cache", dest="cache", action="store_const", const=None)
    a = ap.parse_args(argv)
    selected = [k for k in ks if not a.kernel or k.name in a.kernel]
    todo, missing = jobs(selected, a.full)
    if a.limit:
        per = {}
        todo = [j for j in todo if per.setdefault(j[0].name, []).append(j) or
                len(per[j[0].name]) <= a.limit]
    print(f"triton {triton.__version__}, target cuda sm_{ARCH}a, {len(todo)} compiles, "
          f"{a.jobs} processes")
    if a.list:
        for k, variant, dt, c, _ in todo:
            print(f"{k.name:<9} {variant[:26]:<26} {dt:<4} {config_str(c)}")
        return 0

    hits, rest = cached_rows(todo, a.cache)
    if hits:
        print(f"{len(hits)} results reused from {a.cache} (kernel sources and Triton unchanged)")
    with tempfile.TemporaryDirectory(prefix="triton_aot_cache_") as cache:
        knobs.cache.dir = cache  # a fresh Triton cache: every compile runs ptxas (its -v log)
        knobs.nvidia.dump_ptxas_log = True
        t0 = time.time()
        fresh = run([j for _, j in rest], a.jobs, lambda r: print(fmt(r), flush=True))
    rows = [None] * len(todo)
    for i, row in hits.items():
        rows[i] = row
    for (i, _), row in zip(rest, fresh, strict=True):
        rows[i] = row
    store_rows(rows, todo, a.cache)
    print(f"\n{'kernel':<9} {'compiles':>8} {'FAIL':>5} {'max regs':>8} {'spilling':>8} "
          f"{'max spill B':>11} {'max smem B':>10}")
    for k in selected:
        mine = [r for r in rows if r["kernel"] == k.name]
        ok = [r for r in mine if r["status"] == "OK"]
        if not mine:
            continue
        print(f"{k.name:<9} {len(mine):>8} {len(mine) - len(ok):>5} "
              f"{max((r['regs'] for r in ok), default=0):>8} "
              f"{sum(1 for r in ok if r['spill_stores']):>8} "
              f"{max((r['spill_stores'] for r in ok), default=0):>11} "
              f"{max((r['shared'] for r in ok), default=0):>10}")
    failed = [r for r in rows if r["status"] != "OK"]
    spilled = [r for r in rows if r.get("spill_stores")]
    warned = [r for r in rows if r.get("warning")]
    print(f"\n{len(rows)} compiles in {time.time() - t0:.0f} s: {len(rows) - len(failed)} OK, "
          f"{len(failed)} FAIL, {len(spilled)} spill, {len(warned)} over the shared memory "
          f"limit (triton {triton.__version__})")
    for r in failed:
        print(f"FAIL {r['kernel']} {r['variant']} {r['dtype']} {r['config']}:\n"
              f"  {r['error'][:1500]}")
    if missing and not a.limit:
        print("autotune configs never compiled (widen an 'all' variant's problem):",
              *missing, sep="\n  ")
    if a.json:
        a.json.write_text(json.dumps({"triton": triton.__version__, "target": f"sm_{ARCH}a",
                                      "results": rows}, indent=1))
    return 1 if failed or (missing and not a.limit) else 0


if __name__ == "__main__":
    sys.exit(main())
