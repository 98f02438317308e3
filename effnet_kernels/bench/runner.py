"""The measurement loop of ``python -m effnet_kernels bench``: interleaved rounds.

For each (model, batch, dtype) every runner is built first (:mod:`.baselines`), called once
(compilation, autotuning: ``build_s``) and warmed up (its builder's warm-up calls; on the CPU
at most two), the warm-up calls also sizing its *burst* (calls per round: ``--min-time``
seconds and ``--min-reps`` calls spread over the rounds). Then ``--rounds`` rounds run, and in each round every runner is timed once, one burst
(:func:`.timing.burst_ms`), the starting runner rotating from round to round; so a machine that
gets busier or hotter during the run slows every runner alike. A row's ``ms_per_batch`` is the
median over its rounds; ``round_ms`` keeps every round's value. GPU: ``peak_mem_mb`` is the peak
memory allocated while the runner was built and warmed up, above what was allocated before.
"""

from __future__ import annotations

import gc
import math
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch

import effnet_kernels as ek

from ..models.efficientnet import CONFIGS
from .baselines import (BUILDERS, INT8_CALIB_BATCH, INT8_COMPANIONS, INT8_KINDS, INT8_ONLY,
                        BuildContext, Runner, Unavailable, backend_name, int8_float_dtype,
                        ours_torch_skip_reason, parse_backends)
from .envinfo import environment
from .intmm import INT8_BASELINE_WHY, int_mm_works
from .shapes import add_roofline
from .timing import MiB, burst_ms, copy_bandwidth_gbps

__all__ = ["Job", "Settings", "calls_per_round", "interleave", "plan_jobs", "progress_bar",
           "run"]

MAX_CALLS_PER_ROUND = 200
CPU_MAX_WARMUP = 2  # CPU runners need no autotuning: two warm-up calls after the first


@dataclass(frozen=True)
class Job:
    """One row to measure: model, batch, dtype, backend kind and its printed name."""

    model: str
    batch: int
    dtype: str
    kind: str
    name: str


@dataclass
class Settings:
    """How long to measure: ``rounds`` interleaved rounds, and per runner in all at least
    ``min_time`` seconds and ``min_reps`` timed calls."""

    rounds: int
    min_time: float
    min_reps: int
    quick: bool
    explicit: frozenset = frozenset()  # kinds named in --backends


@dataclass
class _Entry:
    """A built runner of one job and what was measured of it."""

    job: Job
    runner: Runner
    calls: int  # per round
    build_s: float
    note: str | None
    peak_mb: float | None
    round_ms: list = field(default_factory=list)
    error: str | None = None


def plan_jobs(models, batches, dtypes, kinds, device_type: str, quick: bool) -> list[Job]:
    """Every (model, batch, dtype, kind) to measure. ``eager_fp32_nchw`` is fp32 only; the int8
    kinds run only at int8, the others never; with int8 the float rows it is compared with come
    first (ours int8 then quantizes the float model already built)."""
    fdt = int8_float_dtype(device_type)
    jobs = []
    for model in models:
        if "int8" in dtypes and fdt not in dtypes:
            jobs += [Job(model, b, fdt, k, backend_name(k, fdt, quick, device_type))
                     for k in INT8_COMPANIONS[device_type] for b in batches]
        for kind in kinds:
            for dt in (["fp32"] if kind == "eager_fp32_nchw" else dtypes):
                if (kind not in INT8_KINDS[device_type]) if dt == "int8" else (kind in INT8_ONLY):
                    continue
                jobs += [Job(model, b, dt, kind, backend_name(kind, dt, quick, device_type))
                         for b in batches]
    return jobs


def interleave(entries: list, rounds: int, burst) -> None:
    """``rounds`` rounds; in round r every entry without an error is timed once,
    ``entry.round_ms.append(burst(entry))``, starting at entry r (mod n). A burst that raises
    sets the entry's ``error`` and drops it from the later rounds."""
    for r in range(rounds):
        n = len(entries)
        for e in (entries[(r + i) % n] for i in range(n)):
            if e.error is not None:
                continue
            try:
                e.round_ms.append(burst(e))
            except Exception as ex:  # noqa: BLE001  (one failing runner must not end the run)
                e.error = _message(ex)


def _message(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def progress_bar(total: int, quiet: bool):
    """A tqdm bar on stderr (``set_description_str``, ``update``, ``write``, ``close``), or
    one printed line per step without tqdm; nothing with ``quiet``."""
    try:
        if quiet:
            raise ImportError
        from tqdm import tqdm

        return tqdm(total=total, unit="row", dynamic_ncols=True, file=sys.stderr)
    except ImportError:
        return _PlainProgress(total, quiet)


class _PlainProgress:
    """What is printed when tqdm is not installed: one line per step."""

    def __init__(self, total, quiet):
        self.total, self.n, self.quiet = total, 0, quiet

    def set_description_str(self, s):
        if not self.quiet:
            print(f"[{self.n + 1}/{self.total}] {s}", file=sys.stderr, flush=True)

    def update(self, k=1):
        self.n += k

    def write(self, s):
        if not self.quiet:
            print(s, file=sys.stderr, flush=True)

    def close(self):
        pass


def calls_per_round(est_ms: float, s: Settings) -> int:
    """Calls in one burst so that the rounds together time ``min_time`` s and ``min_reps``."""
    by_reps = math.ceil(s.min_reps / s.rounds)
    by_time = math.ceil(s.min_time * 1e3 / s.rounds / max(est_ms, 1e-6))
    return max(1, min(MAX_CALLS_PER_ROUND, max(by_reps, by_time)))


_progress, _calls_per_round = progress_bar, calls_per_round  # the names tests/ use


def _prepare(job: Job, ctx: BuildContext, s: Settings) -> _Entry:
    """Build the job's runner, call it once (timed as ``build_s``), warm it up (timing each
    warm-up call to size its bursts). Raises what the builder or the calls raise."""
    cuda = ctx.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(ctx.device)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(ctx.device)
        torch.cuda.reset_peak_memory_stats(ctx.device)
    t0 = time.perf_counter()
    with torch.no_grad():  # models are built outside inference mode
        runner = BUILDERS[job.kind](ctx)
    with torch.inference_mode():
        runner.fn(runner.x)  # first call: compiles / autotunes; not timed
        build_s = time.perf_counter() - t0
        note = runner.note(runner.fn) if callable(runner.note) else runner.note
        n_warm = max(1, runner.warmup if cuda else min(CPU_MAX_WARMUP, runner.warmup))
        warm = [burst_ms(runner.fn, runner.x, 1, ctx.device) for _ in range(n_warm)]
    peak = (torch.cuda.max_memory_allocated(ctx.device) - before) / MiB if cuda else None
    return _Entry(job, runner, calls_per_round(statistics.median(warm[-3:]), s),
                  round(build_s, 3), note, peak)


def _row(e: _Entry, res: int) -> dict:
    ms = statistics.median(e.round_ms)
    j = e.job
    return {"model": j.model, "resolution": res, "batch": j.batch, "dtype": j.dtype,
            "backend": j.name, "img_per_s": j.batch / ms * 1e3, "ms_per_batch": ms,
            "peak_mem_mb": e.peak_mb, "reps": e.calls * len(e.round_ms),
            "rounds": len(e.round_ms), "calls_per_round": e.calls, "round_ms": e.round_ms,
            "ms_min": min(e.round_ms), "ms_max": max(e.round_ms), "build_s": e.build_s,
            **e.runner.extra, **({"note": e.note} if e.note else {})}


class _Run:
    """State of one ``run``: the document, the progress bar, the backends found unavailable."""

    def __init__(self, doc: dict, bar, device: torch.device, settings: Settings):
        self.doc, self.bar, self.device, self.s = doc, bar, device, settings
        self.unavailable: dict[tuple, str] = {}

    def fail(self, job: Job, e: BaseException | str) -> None:
        """Record a failed job: out of memory is a skip, anything else an error."""
        oom = isinstance(e, torch.cuda.OutOfMemoryError)
        msg = e if isinstance(e, str) else _message(e)
        row = {"model": job.model, "batch": job.batch, "backend": job.name, "dtype": job.dtype}
        (self.doc["skipped"] if oom else self.doc["errors"]).append(
            {**row, ("reason" if oom else "error"): msg})
        self.bar.write(f"{job.model} b{job.batch} {job.dtype} {job.name}: "
                       f"{'out of memory' if oom else 'FAILED'} — {msg}")

    def skip_reason(self, job: Job, res: int) -> str | None:
        """Why a job is not run by default at this size (the integer reference only)."""
        if job.kind == "ours_torch" and "ours_torch" not in self.s.explicit:
            return ours_torch_skip_reason(job.model, res, job.batch)
        return None

    def build(self, job: Job, ctx: BuildContext, res: int) -> _Entry | None:
        """The job's prepared runner, or None (skipped, unavailable or failed: recorded)."""
        self.bar.set_description_str(f"{job.model}@{res} b{job.batch} {job.dtype} {job.name}")
        if (job.kind, job.dtype) in self.unavailable:
            return None  # reported once
        reason = self.skip_reason(job, res)
        if reason:
            self.doc["skipped"].append({"model": job.model, "batch": job.batch,
                                        "backend": job.name, "dtype": job.dtype,
                                        "reason": reason})
            self.bar.write(f"{job.model} b{job.batch} {job.dtype} {job.name}: skipped — {reason}")
            return None
        try:
            return _prepare(job, ctx, self.s)
        except Unavailable as e:
            self.unavailable[(job.kind, job.dtype)] = str(e)
            self.doc["skipped"].append({"model": job.model, "backend": job.name,
                                        "dtype": job.dtype, "reason": str(e)})
            self.bar.write(f"{job.name} ({job.dtype}): not available — {e}")
        except Exception as e:  # noqa: BLE001  (one failing backend must not end the run)
            self.fail(job, e)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        return None

    def group(self, jobs: list[Job], base, res: int, cache: dict) -> None:
        """Build every job of one (model, batch, dtype), then time them in interleaved rounds."""
        j0 = jobs[0]
        g = torch.Generator().manual_seed(j0.batch)
        x = torch.randn(j0.batch, 3, res, res, generator=g).to(self.device)
        entries = []
        for job in jobs:
            ctx = BuildContext(base, job.model, res, job.batch, job.dtype, self.device,
                               self.s.quick, torch.get_num_threads(), x, cache)
            entry = self.build(job, ctx, res)
            if entry is not None:
                entries.append(entry)
            else:
                self.bar.update(1)
        self.bar.set_description_str(f"{j0.model}@{res} b{j0.batch} {j0.dtype}: "
                                     f"{self.s.rounds} rounds × {len(entries)} runners")
        with torch.inference_mode():
            interleave(entries, self.s.rounds,
                       lambda e: burst_ms(e.runner.fn, e.runner.x, e.calls, self.device))
        for e in entries:
            if e.error is not None:
                self.fail(e.job, e.error)
            elif e.round_ms:
                self.doc["results"].append(_row(e, res))
            self.bar.update(1)


def _int8_entry(doc: dict, kinds, dtypes, device, quick: bool, say) -> None:
    """``doc["int8"]`` when int8 is measured; a skip note for int8-only kinds when it is not."""
    fdt = int8_float_dtype(device.type)
    if "int8" in dtypes:
        doc["int8"] = {"compare_dtype": fdt, "float_parts_dtype": fdt,
                       "baseline": backend_name("int8_intmm", "int8", quick, device.type),
                       "baseline_method": INT8_BASELINE_WHY,
                       "int_mm_on_device": int_mm_works(device),
                       "companions": [backend_name(k, fdt, quick, device.type)
                                      for k in INT8_COMPANIONS[device.type]],
                       "calibration": f"one N(0,1) batch of {INT8_CALIB_BATCH} images"}
        say(f"int8: ours + {doc['int8']['baseline']}, compared with the {fdt} rows of "
            f"{', '.join(doc['int8']['companions'])}")
    elif set(kinds) & set(INT8_ONLY):
        names = sorted(backend_name(k, "int8", quick, device.type)
                       for k in set(kinds) & set(INT8_ONLY))
        doc["skipped"].append({"backend": ",".join(names), "dtype": ",".join(dtypes),
                               "reason": "int8-only backend; add int8 to --dtype"})
        say(f"{', '.join(names)}: int8 only — add int8 to --dtype")


def run(args, checkpoint=None) -> dict:
    """Measure every (model, batch, dtype, backend) of ``args`` (the parsed CLI flags, defaults
    filled in); return the JSON document. ``checkpoint(doc)`` is called after every (model,
    batch, dtype) (the CLI rewrites ``--json`` then, so a run cut short keeps what it measured)."""
    device = torch.device(args.device)
    kinds = parse_backends(args.backends, device.type, args.quick)
    s = Settings(args.rounds, args.min_time, args.min_reps, args.quick,
                 frozenset(kinds if args.backends else ()))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    env = environment(device)
    doc = {**env, "quick": args.quick, "min_time_s": s.min_time, "rounds": s.rounds,
           "timing": "interleaved rounds, one burst per runner per round; median over rounds",
           "results": [], "roofline": [], "skipped": [], "errors": []}
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    say(f"bench on {env['device']} · torch {env['torch']} · CUDA {env['cuda']} · "
        f"triton {env['triton']} · commit {env['commit']}")
    doc["copy_gbps"] = copy_bandwidth_gbps(device, nbytes=args.copy_bytes)
    say(f"copy bandwidth (dst.copy_(src), read + write): {doc['copy_gbps']:.1f} GB/s")
    if device.type == "cpu" and args.quick and not args.backends:
        say("compile: not run with --quick on the CPU (inductor compiles B0 for minutes on a "
            "small machine); name it in --backends to include it")
    _int8_entry(doc, kinds if args.backends else (), args.dtype, device, args.quick, say)
    jobs = plan_jobs(args.models, args.batch, args.dtype, kinds, device.type, args.quick)
    state = _Run(doc, progress_bar(len(jobs), args.quiet), device, s)
    for model in args.models:
        res = args.resolution or CONFIGS[model].resolution
        torch.manual_seed(0)
        base, cache = ek.create_model(model).eval(), {}
        groups: dict[tuple, list[Job]] = {}
        for j in (j for j in jobs if j.model == model):
            groups.setdefault((j.batch, j.dtype), []).append(j)
        for group in groups.values():
            state.group(group, base, res, cache)
            if checkpoint is not None:
                checkpoint(doc)
        del base, cache
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    state.bar.close()
    add_roofline(doc, args.models, args.resolution)
    return doc
