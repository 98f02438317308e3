"""``ek.scale_to_budget``: which EfficientNet, at which resolution, fits a latency (or
throughput) budget on *this* machine with our kernels — latency-aware compound scaling.

EfficientNet's B1–B7 are points on the compound-scaling curve chosen for FLOPs (depth α^φ,
width β^φ, resolution γ^φ; :mod:`effnet_kernels.models.efficientnet`). On real hardware FLOPs
and latency disagree, so this module measures instead of counting:

1. **Candidates** (:func:`default_candidates`): the φ grid of the family, its named models, and
   each at 6/7, 1 and 8/7 of its resolution (rounded to 8 px); or the ``candidates`` given
   (:class:`Candidate`, or specs such as ``"b0"``, ``"lite0@192"``, ``"phi=0.5"``,
   ``"w1.1:d1.3@256"``: :meth:`Candidate.parse`).
2. **Measurement**, smallest FLOPs first: each candidate is built (random weights; one
   ``ek.optimize(model, backend, dtype)`` per architecture, shared by its resolutions), called
   once, warmed up (CPU 2, GPU 5 calls) and its latency estimated (the fastest warm-up call). A
   candidate that contains one already estimated over ``stop_factor`` × the budget (width,
   depth and resolution all ≥; not merely more FLOPs: FLOPs and latency disagree) is not built,
   and is listed as skipped. Then ``rounds`` interleaved rounds
   (:func:`effnet_kernels.bench.runner.interleave`: every candidate timed once per round, one
   burst of calls, the starting one rotating) give each candidate's median ms per batch; the
   spread of its rounds is its stated noise. Results are
   cached per device (device name and threads, commit, torch, dtype, batch, backend) in
   ``$EFFNET_CACHE_DIR`` (default ``~/.cache/effnet_kernels``), so a rerun measures only what
   is new.
3. **Selection**: the Pareto frontier of (latency ↓, FLOPs ↑) — FLOPs standing for accuracy
   along the curve — and the chosen candidate: the most FLOPs whose median latency is within
   the budget (ties: the faster). A larger budget therefore never picks a smaller model. No
   candidate inside the budget: ``chosen`` is None and ``message`` names the fastest.

Peak memory: on a GPU measured (``torch.cuda.max_memory_allocated`` over the warm-up, plus
the model's weights); on the CPU an estimate (weights + the largest fused op's input and
output at the batch), since the CPU engine allocates outside torch's allocator.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import re
import statistics
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from .bench.envinfo import environment
from .bench.runner import Settings, calls_per_round, interleave, progress_bar
from .bench.shapes import ELEM_SIZE, ModelShapes, model_shapes, model_traffic, param_count
from .bench.timing import MiB, burst_ms
from .models.efficientnet import (CONFIGS, FAMILIES, PUBLISHED_TOP1, TOP1_SOURCES,
                                  EfficientNet, EfficientNetConfig, check_resolution,
                                  compound_config, phi_point)

__all__ = ["Candidate", "Measurement", "ScaleResult", "add_parser", "choose",
           "default_candidates", "pareto_frontier", "scale_to_budget"]

FAMILY_NAMES = {"efficientnet": "efficientnet", "b": "efficientnet", "lite": "efficientnet_lite",
                "efficientnet_lite": "efficientnet_lite"}
# the default φ grid per family: B7 is near φ = 7, Lite4 near φ = 3.3
PHI_GRID = {"efficientnet": tuple(x / 2 for x in range(-2, 15)),
            "efficientnet_lite": tuple(x / 2 for x in range(-2, 9))}
RESOLUTION_FACTORS = (6 / 7, 1.0, 8 / 7)  # "resolutions around each": 224 → 192, 224, 256
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
DTYPES = {v: k for k, v in DTYPE_NAMES.items()}
CACHE_VERSION = 1


def _family(family: str) -> str:
    if family not in FAMILY_NAMES:
        raise ValueError(f"family must be 'efficientnet' or 'lite', got {family!r}")
    return FAMILY_NAMES[family]


# ----------------------------------------------------------------------------- candidates
@dataclass(frozen=True)
class Candidate:
    """One point to measure: a family, its width and depth multipliers and an input resolution
    (``phi``: the compound coefficient it came from, for the label)."""

    family: str
    width: float
    depth: float
    resolution: int
    phi: float | None = None

    @property
    def config(self) -> EfficientNetConfig:
        """The model's config (a named model's own where width and depth are the table's)."""
        return compound_config(self.family, width_mult=self.width, depth_mult=self.depth,
                               resolution=self.resolution)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def named(self) -> bool:
        """Whether the architecture is a named model (B0–B7, Lite0–4): its weights fit."""
        return self.name in CONFIGS

    @property
    def key(self) -> str:
        """Identity in the cache: family, width, depth, resolution."""
        return f"{self.family}:w{self.width:g}:d{self.depth:g}:r{self.resolution}"

    @property
    def label(self) -> str:
        """Short name: ``b0@224``, ``lite1@208``, ``phi=0.5@240``, ``w1.1:d1.3@256``."""
        if self.named:
            short = self.name.replace("efficientnet_", "")
        elif self.phi is not None:
            short = f"phi={self.phi:g}"
        else:
            short = f"w{self.width:g}:d{self.depth:g}"
        return f"{short}@{self.resolution}"

    @property
    def published_top1(self) -> float | None:
        """Published ImageNet top-1 (%) of a named model at its own resolution, else None."""
        if self.named and self.resolution == CONFIGS[self.name].resolution:
            return PUBLISHED_TOP1[self.name]
        return None

    @property
    def weights(self) -> str:
        """What pretrained weights exist for this point, in words."""
        if not self.named:
            return "custom point: no pretrained weights exist"
        top1 = self.published_top1
        own = CONFIGS[self.name].resolution
        if top1 is None:
            return f"{self.name} weights; top-1 published at {own} px only"
        return f"published top-1 {top1:.1f} %"

    def create_model_call(self) -> str:
        """The ``ek.create_model(...)`` call that builds this point."""
        if self.named:
            own = CONFIGS[self.name].resolution
            extra = "" if self.resolution == own else f", resolution={self.resolution}"
            return f'ek.create_model("{self.name}"{extra})'
        return (f'ek.create_model("{self.family}", width_mult={self.width:g}, '
                f"depth_mult={self.depth:g}, resolution={self.resolution})")

    def create_model(self, **kwargs) -> nn.Module:
        """The model (random weights; kwargs go to :class:`EfficientNet`)."""
        return EfficientNet(self.config, **kwargs)

    @classmethod
    def from_config(cls, cfg: EfficientNetConfig, resolution: int | None = None,
                    phi: float | None = None) -> Candidate:
        family = "efficientnet_lite" if cfg.lite else "efficientnet"
        res = cfg.resolution if resolution is None else check_resolution(resolution)
        return cls(family, cfg.width, cfg.depth, res, phi)

    @classmethod
    def from_phi(cls, phi: float, family: str = "efficientnet",
                 resolution: int | None = None) -> Candidate:
        width, depth, res = phi_point(phi)
        cand = cls(_family(family), width, depth,
                   res if resolution is None else check_resolution(resolution), float(phi))
        return cand if not cand.named else cls(cand.family, width, depth, cand.resolution)

    @classmethod
    def parse(cls, spec: str | Candidate, family: str = "efficientnet") -> Candidate:
        """A candidate from a spec: a model name (``b0``, ``efficientnet_lite2``), ``phi=X``
        (or ``phiX``) of ``family``, or ``wX:dY`` (width, depth multipliers of ``family``),
        each optionally ``@RES`` (default: the model's own resolution, φ's, or 224)."""
        if isinstance(spec, Candidate):
            return spec
        fam = _family(family)
        s = str(spec).strip().lower()
        m = re.fullmatch(r"(?:phi=?(?P<phi>[-+]?[\d.]+)|w(?P<w>[\d.]+):d(?P<d>[\d.]+)|"
                         r"(?P<name>[a-z][a-z_\d]*))(?:@(?P<res>\d+))?", s)
        if m is None:
            raise ValueError(f"bad candidate {spec!r}: expected a model name (b0, lite1@256), "
                             "phi=X[@RES] or wX:dY[@RES]")
        res = int(m["res"]) if m["res"] else None
        try:
            if m["phi"] is not None:
                return cls.from_phi(float(m["phi"]), fam, res)
            if m["w"] is not None:
                cfg = compound_config(fam, width_mult=float(m["w"]), depth_mult=float(m["d"]))
                return cls.from_config(cfg, res)
        except ValueError as e:
            raise ValueError(f"bad candidate {spec!r}: {e}") from None
        name = m["name"] if m["name"] in CONFIGS else f"efficientnet_{m['name']}"
        if name not in CONFIGS:
            raise ValueError(f"bad candidate {spec!r}: unknown model; valid: "
                             f"{', '.join(n.replace('efficientnet_', '') for n in CONFIGS)}")
        return cls.from_config(CONFIGS[name], res)


def default_candidates(family: str = "efficientnet", phis: Iterable[float] | None = None,
                       resolution_factors: Iterable[float] = RESOLUTION_FACTORS
                       ) -> list[Candidate]:
    """The φ grid of the family (default :data:`PHI_GRID`), its named models, each at its
    resolution × ``resolution_factors`` (other than 1: rounded to 8 px), without repeats."""
    fam = _family(family)
    points = [Candidate.from_phi(p, fam) for p in (PHI_GRID[fam] if phis is None else phis)]
    points += [Candidate.from_config(c) for c in CONFIGS.values()
               if c.lite == FAMILIES[fam]]
    out = {}
    for p in points:
        for f in resolution_factors:
            res = p.resolution if f == 1 else max(32, round(p.resolution * f / 8) * 8)
            c = Candidate(p.family, p.width, p.depth, res, p.phi)
            out.setdefault(c.key, c)
    return list(out.values())


# ----------------------------------------------------------------------------- results
@dataclass
class Measurement:
    """One measured candidate: median ms per batch over interleaved rounds (``round_ms``), its
    throughput, cost (GFLOPs per image, parameters), peak memory and noise."""

    candidate: Candidate
    round_ms: list
    batch: int
    gflops: float
    params: int
    peak_mem_mb: float | None
    peak_mem_kind: str  # "measured" (GPU) or "estimate" (CPU)
    cached: bool = False
    on_frontier: bool = False

    @property
    def ms(self) -> float:
        return statistics.median(self.round_ms)

    @property
    def img_per_s(self) -> float:
        return self.batch / self.ms * 1e3

    @property
    def noise_pct(self) -> float:
        """Half the range of the rounds, in % of the median (0 with one round)."""
        return 50 * (max(self.round_ms) - min(self.round_ms)) / self.ms

    def to_dict(self) -> dict:
        c = self.candidate
        return {"label": c.label, "name": c.name, "family": c.family, "width_mult": c.width,
                "depth_mult": c.depth, "resolution": c.resolution, "phi": c.phi,
                "ms_per_batch": self.ms, "img_per_s": self.img_per_s, "noise_pct": self.noise_pct,
                "round_ms": self.round_ms, "gflops_per_img": self.gflops, "params": self.params,
                "peak_mem_mb": self.peak_mem_mb, "peak_mem_kind": self.peak_mem_kind,
                "published_top1": c.published_top1, "weights": c.weights,
                "top1_source": TOP1_SOURCES[c.config.lite] if c.published_top1 else None,
                "create_model": c.create_model_call(), "on_frontier": self.on_frontier,
                "cached": self.cached}


def pareto_frontier(rows: Sequence[Measurement]) -> list[Measurement]:
    """The rows no other row beats on both latency (lower) and FLOPs (higher), by latency:
    along it latency and FLOPs both strictly increase."""
    out, best = [], -math.inf
    for r in sorted(rows, key=lambda r: (r.ms, -r.gflops)):
        if r.gflops > best:
            out.append(r)
            best = r.gflops
    return out


def choose(rows: Sequence[Measurement], limit_ms: float) -> Measurement | None:
    """The row with the most FLOPs whose median latency is at most ``limit_ms`` (ties: more
    parameters, then the faster), or None."""
    inside = [r for r in rows if r.ms <= limit_ms]
    return max(inside, key=lambda r: (r.gflops, r.params, -r.ms), default=None)


@dataclass
class ScaleResult:
    """What :func:`scale_to_budget` found. ``rows``: every measured candidate, by latency;
    ``frontier``: the Pareto frontier; ``chosen``: the largest candidate inside the budget
    (None: none is, ``message`` names the fastest); ``skipped`` / ``errors``: (candidate, why)."""

    rows: list
    frontier: list
    chosen: Measurement | None
    limit_ms: float
    budget_ms: float | None
    min_img_per_s: float | None
    batch: int
    dtype: str
    backend: str
    family: str
    env: dict
    rounds: int
    skipped: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    message: str = ""

    @property
    def noise_pct(self) -> float:
        """The median of the rows' noise (half the range of their rounds, % of the median)."""
        return statistics.median(r.noise_pct for r in self.rows) if self.rows else 0.0

    def budget_words(self) -> str:
        parts = ([f"{self.budget_ms:g} ms per batch"] if self.budget_ms is not None else []) + \
            ([f"{self.min_img_per_s:g} img/s"] if self.min_img_per_s is not None else [])
        return " and ".join(parts) + f" (batch {self.batch})"

    def table(self) -> str:
        """One line per measured candidate, by latency; ``*`` marks the frontier, ``>`` the
        chosen one."""
        head = ["", "candidate", "GFLOPs", "params M", "ms/batch", "± %", "img/s", "peak MB",
                "pretrained weights"]
        lines = []
        for r in self.rows:
            mark = (">" if r is self.chosen else "") + ("*" if r.on_frontier else "")
            peak = "-" if r.peak_mem_mb is None else (
                f"{r.peak_mem_mb:.0f}" + ("~" if r.peak_mem_kind == "estimate" else ""))
            lines.append([mark, r.candidate.label, f"{r.gflops:.3f}", f"{r.params / 1e6:.2f}",
                          f"{r.ms:.3f}", f"{r.noise_pct:.1f}", f"{r.img_per_s:.1f}", peak,
                          r.candidate.weights])
        widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(head)]

        def fmt(cells):
            return "  ".join(c.ljust(w) if i in (0, 1, 8) else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

        return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(c) for c in lines])

    def report(self) -> str:
        """The table, the legend and noise, what was skipped or failed, and the choice."""
        out = [f"{self.env.get('device')} · {self.dtype} · batch {self.batch} · backend "
               f"{self.backend} · commit {self.env.get('commit')} · torch {self.env.get('torch')}",
               self.table(),
               f"* Pareto frontier (latency vs FLOPs)   > chosen   ~ peak memory estimated "
               f"(CPU)   ms/batch: median of {self.rounds} interleaved rounds; ± %: half their "
               f"range (median over candidates: ± {self.noise_pct:.1f} %)",
               f"published top-1 (ImageNet, at the model's own resolution): "
               f"{TOP1_SOURCES[self.family == 'efficientnet_lite']}"]
        n_cached = sum(r.cached for r in self.rows)
        if n_cached:
            out.append(f"{n_cached} of {len(self.rows)} candidates from the cache (measured "
                       "earlier on this device; --no-cache / cache=False to measure again)")
        groups: dict[str, list[str]] = {}
        for c, why in self.skipped:
            groups.setdefault(why, []).append(c.label)
        for why, labels in groups.items():
            out.append(textwrap.fill(f"skipped {len(labels)}, as each {why}: "
                                     f"{', '.join(labels)}", 100, subsequent_indent="  "))
        for c, why in self.errors:
            out.append(f"FAILED {c.label}: {why}")
        out.append(self.message)
        if self.chosen is not None:
            out.append(f"build it: {self.chosen.candidate.create_model_call()}")
        return "\n".join(out)

    def to_dict(self) -> dict:
        return {**self.env, "budget_ms": self.budget_ms, "min_img_per_s": self.min_img_per_s,
                "limit_ms": self.limit_ms, "batch": self.batch, "dtype": self.dtype,
                "backend": self.backend, "family": self.family, "rounds": self.rounds,
                "noise_pct": self.noise_pct, "message": self.message,
                "chosen": self.chosen.to_dict() if self.chosen else None,
                "frontier": [r.candidate.label for r in self.frontier],
                "rows": [r.to_dict() for r in self.rows],
                "skipped": [{"label": c.label, "reason": w} for c, w in self.skipped],
                "errors": [{"label": c.label, "error": w} for c, w in self.errors]}

    def plot(self, path: str | Path) -> None:
        """PNG: latency vs GFLOPs per image (log-log), the frontier, the budget line, the
        chosen candidate, named models labelled."""
        from .bench.report import check_matplotlib

        check_matplotlib()
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker

        fig, ax = plt.subplots(figsize=(7.5, 5))
        ax.scatter([r.gflops for r in self.rows], [r.ms for r in self.rows], s=18, c="0.6",
                   label="candidates")
        ax.plot([r.gflops for r in self.frontier], [r.ms for r in self.frontier], "o-",
                c="tab:blue", ms=5, label="Pareto frontier")
        ax.axhline(self.limit_ms, ls="--", c="tab:red", label=f"budget {self.limit_ms:.3g} ms")
        if self.chosen is not None:
            ax.scatter([self.chosen.gflops], [self.chosen.ms], marker="*", s=220, c="tab:orange",
                       zorder=5, label=f"chosen {self.chosen.candidate.label}")
        for r in self.rows:
            if r.candidate.named or r.on_frontier:
                ax.annotate(r.candidate.label, (r.gflops, r.ms), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_yscale("log")
        plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
        for axis, vals in ((ax.xaxis, [r.gflops for r in self.rows]),
                           (ax.yaxis, [r.ms for r in self.rows] + [self.limit_ms])):
            axis.set_major_formatter(plain)
            if vals and max(vals) < 10 * min(vals):  # less than a decade: label 2, 3, ... too
                axis.set_minor_formatter(plain)
        ax.tick_params(which="minor", labelsize=7)
        ax.set_xlabel("GFLOPs per image")
        ax.set_ylabel(f"ms per batch of {self.batch}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        ax.set_title(f"{self.env.get('device')} · {self.dtype} · batch {self.batch} · "
                     f"commit {self.env.get('commit')}", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


# ----------------------------------------------------------------------------- measuring
@dataclass
class _Entry:
    """A candidate being measured (the fields :func:`interleave` uses: round_ms, error)."""

    candidate: Candidate
    est_ms: float
    fn: Callable | None = None
    x: torch.Tensor | None = None
    calls: int = 1
    peak_mb: float | None = None
    round_ms: list = field(default_factory=list)
    error: str | None = None


def _message(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


@functools.lru_cache(maxsize=512)
def _cost(c: Candidate) -> tuple[ModelShapes, float, int]:
    """(shapes, GFLOPs per image, parameters of the trainable model) — from meta tensors."""
    ms = model_shapes(c.config, c.resolution)
    return ms, model_traffic(ms)["flops"] / 1e9, param_count(c.config)


def _cpu_peak_mb(ms: ModelShapes, batch: int, elem: int) -> float:
    """Weights (BN folded) + the largest input + output (+ residual) of one fused op, at
    ``batch``: the CPU estimate of peak memory."""
    h0, w0 = ms.stem_hw
    live = [3 * ms.resolution**2 + ms.stem_ch * h0 * w0]
    for b in ms.blocks:
        x, mid, mido, y = (b.in_ch * b.h * b.w, b.mid_ch * b.h * b.w, b.mid_ch * b.ho * b.wo,
                           b.out_ch * b.ho * b.wo)
        live += [x + mid, mid + mido, mido + y + (x if b.residual else 0)]
    live.append(ms.head_in * ms.head_hw[0] * ms.head_hw[1])
    weights = model_traffic(ms, elem_size=elem)["weight_bytes"]
    return (batch * elem * max(live) + weights) / MiB


class _Measurer:
    """Builds, warms up and times candidates for :func:`scale_to_budget` (or asks ``timer``)."""

    def __init__(self, device: torch.device, batch: int, dtype: torch.dtype, backend: str,
                 settings: Settings, timer: Callable[[Candidate], float] | None):
        self.device, self.batch, self.dtype, self.backend = device, batch, dtype, backend
        self.s, self.timer = settings, timer
        self.models: dict[tuple, nn.Module] = {}  # one optimized model per architecture

    def _model(self, c: Candidate) -> nn.Module:
        import effnet_kernels as ek

        arch = (c.family, c.width, c.depth)
        if arch not in self.models:
            torch.manual_seed(0)
            with torch.no_grad():
                base = EfficientNet(c.config).eval().to(self.device)
                self.models[arch] = ek.optimize(base, backend=self.backend, dtype=self.dtype)
        return self.models[arch]

    def prepare(self, c: Candidate) -> _Entry:
        """Build (or reuse) the model, call it once, warm it up; the estimate is the fastest
        warm-up call. Raises what building or calling raises."""
        if self.timer is not None:
            est = float(self.timer(c))
            return _Entry(c, est, calls=1)
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
        f = self._model(c)
        g = torch.Generator().manual_seed(self.batch)
        x = torch.randn(self.batch, 3, c.resolution, c.resolution, generator=g).to(
            self.device, self.dtype).contiguous(memory_format=torch.channels_last)
        if cuda:
            before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        with torch.inference_mode():
            f(x)  # first call: Triton autotuning, the CPU engine's plan
            warm = [burst_ms(f, x, 1, self.device) for _ in range(5 if cuda else 2)]
        peak = None
        if cuda:
            weights = sum(b.numel() * b.element_size() for b in f.buffers())
            peak = (torch.cuda.max_memory_allocated(self.device) - before + weights) / MiB
        est = min(warm)  # other load only ever adds time: the least is the best estimate
        return _Entry(c, est, f, x, calls_per_round(est, self.s), peak)

    def burst(self, e: _Entry) -> float:
        if self.timer is not None:
            return float(self.timer(e.candidate))
        with torch.inference_mode():
            return burst_ms(e.fn, e.x, e.calls, self.device)


# ----------------------------------------------------------------------------- the cache
def _cache_file(cache, key: dict) -> Path | None:
    if cache is False or cache is None:
        return None
    root = Path(os.environ.get("EFFNET_CACHE_DIR", "~/.cache/effnet_kernels")).expanduser() \
        if cache is True else Path(cache)
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return root / f"scale-{digest}.json"


def _cache_load(path: Path | None, key: dict) -> dict:
    if path is None or not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # a damaged cache is measured again (and rewritten)
    return doc.get("results", {}) if doc.get("key") == key else {}


def _cache_save(path: Path | None, key: dict, results: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"key": key, "results": results}, indent=1) + "\n")
    tmp.replace(path)


# ----------------------------------------------------------------------------- the search
def _positive(name: str, v, integer: bool = False):
    ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v > 0
    if not ok or (integer and v != int(v)):
        kind = "a whole number ≥ 1" if integer else "a finite number > 0"
        raise ValueError(f"{name} must be {kind}, got {v!r}")
    return int(v) if integer else float(v)


def _contains(c: Candidate, o: Candidate) -> bool:
    """Whether ``c`` is ``o`` grown in every dimension (width, depth, resolution all ≥): it
    does more of every kind of work, so it is not faster (FLOPs alone do not say that)."""
    return c.width >= o.width and c.depth >= o.depth and c.resolution >= o.resolution


def _device_and_dtype(device, dtype) -> tuple[torch.device, torch.dtype]:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device: {e}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda asked for, but no CUDA GPU is visible")
    if dtype is None:
        dtype = torch.float16 if dev.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        name = {"float32": "fp32", "float16": "fp16", "half": "fp16",
                "bfloat16": "bf16"}.get(dtype, dtype)
        if name not in DTYPES:
            raise ValueError(f"dtype must be fp32, fp16 or bf16, got {dtype!r}")
        dtype = DTYPES[name]
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"dtype must be torch.float32, float16 or bfloat16, got {dtype!r}")
    return dev, dtype


def scale_to_budget(budget_ms: float | None = None, min_img_per_s: float | None = None,
                    device: str | torch.device | None = None, batch: int = 1,
                    dtype: torch.dtype | str | None = None, backend: str = "auto",
                    family: str = "efficientnet",
                    candidates: Sequence[Candidate | str] | None = None, *,
                    rounds: int | None = None, min_time: float | None = None,
                    stop_factor: float = 2.0, cache: bool | str | os.PathLike = True,
                    progress: bool = False,
                    timer: Callable[[Candidate], float] | None = None) -> ScaleResult:
    """The largest EfficientNet (and resolution) that fits the budget on ``device``, measured
    with ``ek.optimize(model, backend, dtype)`` at ``batch`` (method: the module docstring).

    Args:
        budget_ms: latency budget, ms per batch (median). min_img_per_s: throughput budget.
            At least one; with both, a candidate must meet both.
        device: "cpu" or "cuda" (default: cuda if available). dtype: float32/float16/bfloat16
            or "fp32"/"fp16"/"bf16" (default fp16 on a GPU, fp32 on the CPU).
        family: "efficientnet" (B) or "lite". candidates: :class:`Candidate` or specs
            (:meth:`Candidate.parse`); default :func:`default_candidates` of the family.
        rounds / min_time: interleaved rounds (default 5) and seconds of timed calls per
            candidate over all rounds (default 0.3 CPU, 0.2 GPU).
        stop_factor: candidates containing one estimated over this × the budget (width, depth
            and resolution all ≥) are skipped. cache: True (``$EFFNET_CACHE_DIR`` or
            ``~/.cache/effnet_kernels``), a directory, or False. progress: a progress bar on
            stderr.
        timer: instead of building and timing, ``timer(candidate)`` → ms per batch of one
            round (for tests and other clocks; with it, ``cache=True`` means no cache).

    Returns a :class:`ScaleResult`; its ``chosen`` is None when no candidate meets the
    budget (its ``message`` names the fastest). Bad arguments raise ValueError; a backend that
    is not available raises RuntimeError (``ek.optimize``'s).
    """
    from . import __version__
    from .optimize import op_backends

    if budget_ms is None and min_img_per_s is None:
        raise ValueError("give budget_ms (ms per batch) or min_img_per_s (or both)")
    budget_ms = None if budget_ms is None else _positive("budget_ms", budget_ms)
    min_img_per_s = None if min_img_per_s is None else _positive("min_img_per_s", min_img_per_s)
    batch = _positive("batch", batch, integer=True)
    rounds = _positive("rounds", rounds if rounds is not None else 5, integer=True)
    stop_factor = _positive("stop_factor", stop_factor)
    dev, dt = _device_and_dtype(device, dtype)
    fam = _family(family)
    if timer is None:
        op_backends(backend, dev)  # RuntimeError now, not once per candidate
    if isinstance(candidates, (str, Candidate)):
        candidates = [candidates]
    cands = default_candidates(fam) if candidates is None else \
        [Candidate.parse(c, fam) for c in candidates]
    if not cands:
        raise ValueError("candidates is empty")
    wrong = [c.label for c in cands if c.family != fam]
    if wrong:
        raise ValueError(f"candidates {', '.join(wrong)} are not of family {family!r}; "
                         f"measure each family in its own call (family='lite' for Lite)")
    cands = list({c.key: c for c in cands}.values())
    limits = ([budget_ms] if budget_ms is not None else []) + \
        ([batch * 1e3 / min_img_per_s] if min_img_per_s is not None else [])
    limit = min(limits)
    if min_time is None:
        min_time = 0.2 if dev.type == "cuda" else 0.3
    settings = Settings(rounds, _positive("min_time", min_time), 3, quick=True)
    env = environment(dev)
    key = {"v": CACHE_VERSION, "device": env["device"], "commit": env["commit"],
           "torch": env["torch"], "effnet_kernels": __version__, "dtype": DTYPE_NAMES[dt],
           "batch": batch, "backend": backend}
    # a custom timer never writes the device's default cache; a directory given is used
    cache_path = _cache_file(False if timer is not None and cache is True else cache, key)
    cached = _cache_load(cache_path, key)
    meas = _Measurer(dev, batch, dt, backend, settings, timer)
    costs = {c.key: _cost(c) for c in cands}
    cands.sort(key=lambda c: (costs[c.key][1], c.resolution))
    bar = progress_bar(len(cands) + rounds, quiet=not progress)
    entries, over, skipped, errors, done = [], [], [], [], {}
    for c in cands:
        bar.set_description_str(f"build {c.label}")
        inside = next((o for o, _ in over if _contains(c, o)), None)
        if c.key in cached:
            done[c.key] = cached[c.key]
            est = statistics.median(cached[c.key]["round_ms"])
        elif inside is not None:
            skipped.append((c, f"contains {inside.label} (width, depth and resolution all ≥), "
                               f"which took {dict(over)[inside]:.3g} ms, over {stop_factor:g} × "
                               "the budget"))
            bar.update(1)
            continue
        else:
            try:
                e = meas.prepare(c)
            except Exception as ex:  # noqa: BLE001  (one failing candidate must not end it)
                errors.append((c, _message(ex)))
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                bar.update(1)
                continue
            entries.append(e)
            est = e.est_ms
        if est > stop_factor * limit:
            over.append((c, est))
        bar.update(1)
    for r in range(rounds):  # interleave's rounds, one at a time for the progress bar
        bar.set_description_str(f"round {r + 1}/{rounds} × {len(entries)} candidates")
        interleave(entries, 1, meas.burst)
        entries = entries[1:] + entries[:1]  # rotate the starting candidate
        bar.update(1)
    bar.close()
    for e in entries:
        if e.error is not None:
            errors.append((e.candidate, e.error))
        elif e.round_ms:
            ms = costs[e.candidate.key][0]
            peak, kind = (e.peak_mb, "measured") if dev.type == "cuda" else (
                _cpu_peak_mb(ms, batch, ELEM_SIZE[DTYPE_NAMES[dt]]), "estimate")
            done[e.candidate.key] = {"round_ms": e.round_ms, "peak_mem_mb": peak,
                                     "peak_mem_kind": kind, "date": time.strftime("%Y-%m-%d")}
    _cache_save(cache_path, key, {**cached, **done})
    by_key = {c.key: c for c in cands}
    rows = [Measurement(by_key[k], v["round_ms"], batch, costs[k][1], costs[k][2],
                        v["peak_mem_mb"], v["peak_mem_kind"], cached=k in cached)
            for k, v in done.items() if k in by_key]
    rows.sort(key=lambda r: (r.ms, -r.gflops))
    frontier = pareto_frontier(rows)
    for r in frontier:
        r.on_frontier = True
    chosen = choose(rows, limit)
    res = ScaleResult(rows, frontier, chosen, limit, budget_ms, min_img_per_s, batch,
                      DTYPE_NAMES[dt], backend, fam, env, rounds, skipped, errors)
    res.message = _verdict(res)
    return res


def _verdict(res: ScaleResult) -> str:
    if not res.rows:
        return "no candidate could be measured (see the errors above)"
    if res.chosen is None:
        fastest = res.rows[0]
        return (f"no candidate meets the budget of {res.budget_words()}: the fastest is "
                f"{fastest.candidate.label} ({fastest.candidate.name}) at {fastest.ms:.3f} ms "
                f"per batch (± {fastest.noise_pct:.1f} %), {fastest.img_per_s:.1f} img/s")
    c = res.chosen
    close = (f" (within its noise of the limit {res.limit_ms:.3g} ms: leave margin)"
             if c.ms * (1 + c.noise_pct / 100) > res.limit_ms else "")
    return (f"chosen: {c.candidate.label} — {c.ms:.3f} ms per batch (± {c.noise_pct:.1f} %), "
            f"{c.img_per_s:.1f} img/s, within {res.budget_words()}{close}; {c.gflops:.3f} "
            f"GFLOPs, {c.params / 1e6:.2f} M parameters; {c.candidate.weights}")


# ----------------------------------------------------------------------------- the command
def _budget(s: str) -> float:
    try:
        return _positive("the budget", float(s))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``scale`` on the CLI's subparsers."""
    from .bench.cli import _dtype_name, _positive_int, _seconds

    p = sub.add_parser("scale", help="the largest EfficientNet (and resolution) that fits a "
                       "latency or throughput budget here, measured",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-ms", type=_budget, help="latency budget: ms per batch (median)")
    p.add_argument("--min-img-per-s", type=_budget, help="throughput budget: images per second")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.add_argument("--batch", type=_positive_int, default=1, help="batch size (default 1)")
    p.add_argument("--dtype", type=_dtype_name, default=None,
                   help="fp32, fp16 or bf16 (default fp16 on a GPU, fp32 on the CPU)")
    p.add_argument("--backend", default="auto", choices=["auto", "cuda", "triton", "cpu", "torch"],
                   help="ek.optimize backend (default auto)")
    p.add_argument("--family", default="efficientnet", choices=["efficientnet", "lite"])
    p.add_argument("--candidates", default=None,
                   help="comma list instead of the default grid: model names (b0, lite1@256), "
                        "phi=X[@RES], wX:dY[@RES] (width, depth multipliers)")
    p.add_argument("--rounds", type=_positive_int, default=None,
                   help="interleaved rounds (default 5)")
    p.add_argument("--min-time", type=_seconds, default=None,
                   help="seconds of timed calls per candidate (default 0.3 CPU, 0.2 GPU)")
    p.add_argument("--threads", type=_positive_int, default=None, help="CPU threads of torch")
    p.add_argument("--no-cache", action="store_true",
                   help="measure everything again (and do not write the cache)")
    p.add_argument("--plot", default=None, help="write a PNG: latency vs FLOPs, frontier, budget")
    p.add_argument("--json", default=None, help="write every measurement as JSON here")
    p.add_argument("--verify", action="store_true",
                   help="measure the chosen candidate again, alone, and compare with the budget")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_scale)
    return p


def cmd_scale(args) -> int:
    """Measure, print the report, write ``--json`` / ``--plot``. Exit status 1 when no
    candidate meets the budget."""
    from .bench.cli import write_json
    from .bench.envinfo import result_filename
    from .bench.report import check_matplotlib

    if args.budget_ms is None and args.min_img_per_s is None:
        raise SystemExit("scale: give --budget-ms or --min-img-per-s")
    if args.plot:
        check_matplotlib()  # before measuring, not after
    if args.threads:
        torch.set_num_threads(args.threads)
    specs = None if args.candidates is None else [
        s for s in args.candidates.split(",") if s.strip()]
    kw = {"device": args.device, "batch": args.batch, "dtype": args.dtype,
          "backend": args.backend, "family": args.family, "rounds": args.rounds,
          "min_time": args.min_time}
    try:
        res = scale_to_budget(args.budget_ms, args.min_img_per_s, candidates=specs,
                              cache=not args.no_cache, progress=not args.quiet, **kw)
    except (ValueError, RuntimeError) as e:
        raise SystemExit(f"scale: {e}") from e
    print(res.report())
    if args.verify and res.chosen is not None:
        again = scale_to_budget(args.budget_ms, args.min_img_per_s, cache=False,
                                candidates=[res.chosen.candidate], **kw)
        r = again.rows[0] if again.rows else None
        print("verify: " + (f"{res.chosen.candidate.label} measured again alone: {r.ms:.3f} ms "
                            f"per batch (± {r.noise_pct:.1f} %), "
                            f"{'within' if r.ms <= res.limit_ms else 'OVER'} the limit "
                            f"{res.limit_ms:.3g} ms" if r else again.message))
    if args.json:
        doc, dest = res.to_dict(), Path(args.json)
        if dest.is_dir():  # not named like a bench result: `bench --load` does not read these
            dest = dest / f"scale-{result_filename(doc)}"
        print(f"wrote {write_json(doc, str(dest))}")
    if args.plot:
        res.plot(args.plot)
        print(f"wrote {args.plot}")
    return 0 if res.chosen is not None else 1
