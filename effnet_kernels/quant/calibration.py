"""INT8 calibration maths: the int8 grid of a range, per-channel weight quantisation, the
observers and range choices (min/max, percentile, MSE), bias correction, and the calibration
pass over a float model."""

from __future__ import annotations

import fnmatch
import math
import sys
from collections.abc import Iterable

import torch
from torch import Tensor, nn

METHODS = ("minmax", "percentile", "mse")


# ----------------------------------------------------------------------------- quant math
def qparams_from_range(lo: float, hi: float) -> tuple[float, int]:
    """(scale, zero point) of the asymmetric int8 grid covering [min(lo, 0), max(hi, 0)]."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"calibration range [{lo}, {hi}] is not finite (NaN/inf activations)")
    if hi - lo < 1e-8:
        hi = lo + 1e-8
    scale = (hi - lo) / 255.0
    zp = int(round(-128 - lo / scale))
    return float(scale), max(-128, min(127, zp))


def quantize_weight(w: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-output-channel int8: (w_q int8 in [−127, 127], s_w float32 (Cout,))."""
    w32 = w.detach().float()
    amax = w32.reshape(w32.shape[0], -1).abs().amax(dim=1)
    s = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(w32 / s.view(-1, *([1] * (w32.dim() - 1)))).clamp_(-127, 127)
    return q.to(torch.int8), s


def dequantize_weight(wq: Tensor, s: Tensor) -> Tensor:
    """float32 ``wq · s`` with ``s`` (Cout,) per output channel (dim 0)."""
    return wq.float() * s.view(-1, *([1] * (wq.dim() - 1)))


def sqnr_db(ref: Tensor, test: Tensor) -> float:
    """Signal-to-quantisation-noise ratio 10·log10(Σref² / Σ(ref − test)²) in dB."""
    ref, test = ref.double(), test.double()
    noise = (ref - test).pow(2).sum().item()
    sig = ref.pow(2).sum().item()
    if noise == 0:
        return math.inf
    return 10.0 * math.log10(sig / noise) if sig > 0 else -math.inf


class _Observer:
    """Running min/max and a bounded random sample of one tensor's values."""

    def __init__(self, max_samples: int, generator: torch.Generator):
        self.lo, self.hi = math.inf, -math.inf
        self.samples: list[Tensor] = []
        self.count = 0
        self.max_samples = max_samples
        self.gen = generator

    def update(self, t: Tensor) -> None:
        v = t.detach().float().reshape(-1)
        if v.numel() == 0:
            return
        if not torch.isfinite(v).all():
            raise ValueError("calibration saw NaN or inf activations")
        self.lo = min(self.lo, v.min().item())
        self.hi = max(self.hi, v.max().item())
        per_batch = max(1, self.max_samples // 4)
        if v.numel() > per_batch:
            idx = torch.randint(0, v.numel(), (per_batch,), generator=self.gen).to(v.device)
            v = v[idx]
        self.samples.append(v.cpu())
        self.count += 1
        total = sum(s.numel() for s in self.samples)
        if total > self.max_samples:  # keep a uniform-ish subsample of everything seen
            allv = torch.cat(self.samples)
            keep = torch.randperm(allv.numel(), generator=self.gen)[: self.max_samples]
            self.samples = [allv[keep]]

    def sample(self) -> Tensor:
        return torch.cat(self.samples) if self.samples else torch.zeros(1)

    def range(self, method: str, percentile: float) -> tuple[float, float]:
        if method == "minmax":
            return self.lo, self.hi
        s = self.sample()
        if method == "percentile":
            q = torch.quantile(s.double(), torch.tensor([1 - percentile / 100, percentile / 100],
                                                        dtype=torch.float64))
            return q[0].item(), q[1].item()
        if method == "mse":
            return _mse_range(s, self.lo, self.hi)
        raise ValueError(f"unknown calibration method {method!r}; expected one of {METHODS}")


def fake_quant(v: Tensor, lo: float, hi: float) -> Tensor:
    scale, zp = qparams_from_range(lo, hi)
    q = torch.floor(v * (1.0 / scale) + 0.5).add_(zp).clamp_(-128, 127)
    return (q - zp) * scale


def _mse_range(s: Tensor, lo: float, hi: float, steps: int = 40,
               max_search: int = 1 << 17) -> tuple[float, float]:
    """Clipping range minimising Σ(v − fakequant(v))² over the sample (at most ``max_search``
    values of it): the upper bound over ``steps`` fractions of hi (lower bound fixed), then the
    lower bound likewise."""
    if s.numel() > max_search:
        s = s[torch.randperm(s.numel(), generator=torch.Generator().manual_seed(0))[:max_search]]
    s = s.double()
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    fracs = torch.linspace(0.2, 1.0, steps, dtype=torch.float64).tolist()

    def err(a, b):
        return (s - fake_quant(s, a, b)).pow(2).sum().item()

    best_hi = min((hi * f for f in fracs), key=lambda b: err(lo, b)) if hi > 0 else hi
    best_lo = min((lo * f for f in fracs), key=lambda a: err(a, best_hi)) if lo < 0 else lo
    return best_lo, best_hi


def corrected_bias(w: Tensor, wq: Tensor, sw: Tensor, bias: Tensor, in_mean: Tensor | None,
                    depthwise: bool = False) -> Tensor:
    """float32 bias, minus the mean error the weight rounding adds to the output (empirical bias
    correction, Nagel et al. 2019): δ[c] = Σ_k (s_w[c]·w_q[c, k] − w[c, k]) · E[x_k] with E[x]
    the per-channel mean of the layer's float input over the calibration data. Inputs after
    ReLU6 / SiLU have a large positive mean, so the rounding error of the weights does not
    average out: it shifts every output channel by a constant that this removes."""
    b = bias.detach().double().clone()
    if in_mean is not None:
        dw = (wq.double().reshape(wq.shape[0], -1) * sw.double().view(-1, 1).to(wq.device)
              - w.detach().double().reshape(w.shape[0], -1))
        m = in_mean.double().to(b.device)
        b -= dw.sum(1) * m if depthwise else dw @ m
    return b.float()


# ----------------------------------------------------------------------------- modules
def method_for(name: str, method) -> str:
    if isinstance(method, str):
        m = method
    else:
        m = next((v for pat, v in method.items() if fnmatch.fnmatchcase(name, pat)), None)
        if m is None:
            raise ValueError(f"calibration method dict has no pattern matching {name!r} "
                             "(add a '*' default)")
    if m not in METHODS:
        raise ValueError(f"unknown calibration method {m!r} for {name!r}; expected one of "
                         f"{METHODS}")
    return m


def quant_points(f: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every module whose float output is quantised, in forward order."""
    pts: list[tuple[str, nn.Module]] = [("stem", f.stem)]
    for s, stage in enumerate(f.blocks):
        for j, blk in enumerate(stage):
            if blk.expand is not None:
                pts.append((f"blocks.{s}.{j}.expand", blk.expand))
            pts.append((f"blocks.{s}.{j}.dw", blk.dw))
            pts.append((f"blocks.{s}.{j}", blk))
    return pts


def progress_bar(it, total, desc, enabled):
    if not enabled:
        yield from it
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:  # a plain text bar
        n = 0
        for item in it:
            n += 1
            sys.stderr.write(f"\r{desc}: {n}/{total if total else '?'}")
            sys.stderr.flush()
            yield item
        sys.stderr.write("\n")
        return
    yield from tqdm(it, total=total, desc=desc)


def calibrate(f: nn.Module, batches: Iterable, method, percentile: float,
               max_samples: int, progress: bool, seed: int) -> dict[str, dict]:
    points = quant_points(f)
    gen = torch.Generator().manual_seed(seed)
    obs = {name: _Observer(max_samples, gen) for name, _ in points}
    handles = []
    for name, mod in points:
        def hook(_m, _args, out, name=name):
            obs[name].update(out[0] if isinstance(out, tuple) else out)
        handles.append(mod.register_forward_hook(hook))
    # per-channel means of every int8 layer's float input (gated for the project conv), for
    # the bias correction
    sums: dict[str, list] = {}
    for name, mod in int8_layers(f).items():
        def pre(_m, args, kwargs, name=name):
            x = args[0].double()
            g = kwargs.get("gate")
            if g is not None:
                x = x * g.double()[:, :, None, None]
            acc = sums.setdefault(name, [0.0, 0])
            acc[0] = acc[0] + x.sum(dim=(0, 2, 3))
            acc[1] += x.shape[0] * x.shape[2] * x.shape[3]
        handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
    cin = f.stem.weight.shape[1]
    n = 0
    total = len(batches) if hasattr(batches, "__len__") else None
    try:
        with torch.no_grad():
            for i, xb in enumerate(progress_bar(iter(batches), total, "calibrating", progress)):
                if isinstance(xb, (tuple, list)):  # (images, labels) from a DataLoader
                    xb = xb[0]
                if not isinstance(xb, Tensor) or xb.dim() != 4 or xb.shape[1] != cin \
                        or not xb.is_floating_point():
                    got = (tuple(xb.shape), xb.dtype) if isinstance(xb, Tensor) else type(xb)
                    raise ValueError(f"calibration batch {i} must be a float (N, {cin}, H, W) "
                                     f"tensor, got {got}")
                if xb.shape[0] == 0:
                    raise ValueError(f"calibration batch {i} is empty")
                f.forward_eager(xb.to(f.device))
                n += 1
    finally:
        for h in handles:
            h.remove()
    if n == 0:
        raise ValueError("calibration_batches is empty: quantize needs at least one batch of "
                         "images to calibrate the activation ranges")
    out = {}
    for name, _ in points:
        m = method_for(name, method)
        lo, hi = obs[name].range(m, percentile)
        scale, zp = qparams_from_range(lo, hi)
        out[name] = {"method": m, "range": (min(lo, 0.0), max(hi, 0.0)), "seen": (obs[name].lo,
                     obs[name].hi), "scale": scale, "zero_point": zp}
    means = {name: (v[0] / max(v[1], 1)).float() for name, v in sums.items()}
    return out, means


def int8_layers(f) -> dict[str, nn.Module]:
    """name → every layer that runs in int8 (expand, dw, project, head) of a fused or quantized
    model, in forward order."""
    out = {}
    for s, stage in enumerate(f.blocks):
        for j, blk in enumerate(stage):
            for part in ("expand", "dw", "project"):
                m = getattr(blk, part)
                if m is not None:
                    out[f"blocks.{s}.{j}.{part}"] = m
    out["head"] = f.head
    return out
