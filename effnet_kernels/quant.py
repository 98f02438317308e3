"""INT8 post-training quantization: ``q = ek.quantize(f, calibration_batches)``.

Scheme (the arithmetic is defined exactly by ``reference.py``, section "INT8"):

* **Weights**: BN-folded, symmetric per output channel (depthwise: per channel) int8 in
  [−127, 127], ``s_w[c] = max|w[c]| / 127``. Biases stay float32 (the accumulator is dequantised
  as ``acc · s_in·s_w[c] + bias[c]``, one float multiply-add).
* **Activations**: int8 with one (scale, zero point) per tensor, asymmetric (SiLU's range is
  about [−0.28, max]: a zero point buys almost a bit there), real 0 exactly representable.
  Quantised tensors: every block's expand output, depthwise output and block output (and the
  stem output with ``first_dw_float=False``). The int8 tensors between ops are all the
  activation traffic: 1 byte per element, half of fp16.
* **Kept in float** (and why): the *stem conv* (3 input channels, 2.8 % of B0's MACs, but its
  int8 weights alone would cost Lite0's logits 29 dB — as much as all 16 project layers in int8,
  measured by ``float_kept_sqnr``); the *first depthwise conv* (``first_dw_float=True``, the
  default: it reads the float stem output, so the stem output is not quantised either; its int8
  weights alone cost Lite0's logits 22 dB, see ``FloatDWConvQuantOut``; with
  ``first_dw_float=False`` the stem runs conv → ``bias_act`` → quantise and the first block
  reads int8);
  the *SE FCs* (``se_gate`` in float32 from the float32 pool that the int8 depthwise kernel
  computes from its *float* activations before requantising: a few KB per image, and the gate
  multiplies every channel of the block, so its error would be everywhere; int8 FCs measured
  35 dB on B0: affordable, but there are no bytes to win); the *head pool and the classifier*
  (the int8 head GEMM returns the float32 pool directly, the 1280→1000 ``F.linear`` is 1.3 M
  MACs on a vector; int8 would cost 39–43 dB). ``layer_sqnr`` measures what each int8 layer type
  costs; the numbers are in ``benchmarks/results/int8_accuracy.md``.

Per MBConv block (int8 in, int8 out)::

    h  = pointwise_int8(x, act)                               [expand]
    y, pool = dwconv_int8(h, act, return_pool=SE)             float32 pool of the float act
    g  = se_gate(pool)                                        float32
    out = pointwise_int8(y, gate=g, residual=x)               [project; gate applied to the
                                                               int8 input in its own scale]

Calibration (``method``): run the float model over ``calibration_batches`` and observe every
quantised tensor: running min/max, plus a random sample of up to 2¹⁹ values per tensor
(``max_samples``). ``"minmax"`` uses the observed range; ``"percentile"`` the
``percentile`` / ``100 − percentile`` quantiles of the sample (default 99.99); ``"mse"`` (the
default: the best logit SQNR in ``benchmarks/results/int8_accuracy.md``) the clipping range that
minimises the quantisation MSE on (up to 2¹⁷ values of) the sample, by a coordinate search over
the upper then the lower bound. ``method`` can also be a dict of ``fnmatch`` patterns over the
tensor names (``"stem"``, ``"blocks.3.1.expand"``, ``"blocks.3.1.dw"``, ``"blocks.3.1"`` for a
block output) to methods, the first match wins and ``"*"`` is the default (``q.calibration``
records what each tensor got). Then (``bias_correction=True``) each int8 layer's bias absorbs
the mean error its rounded weights add, measured on the same batches.

Backends (resolved once, per op, ``q.backends``): ``"torch"`` is the exact integer reference
(the oracle; the way accuracy is measured without a GPU); ``"triton"`` runs both int8 ops in
Triton; ``"cuda"`` runs ``dwconv_int8`` in CUDA and ``pointwise_int8`` in Triton (it has no CUDA
kernel: stated in ``q.substitutions``); ``"auto"``: cuda → triton on a GPU, the torch reference on
the CPU (there are no CPU int8 kernels; ``"cpu"`` raises).

**Status**: the int8 Triton kernels are tested under the interpreter only and the CUDA int8
depthwise kernel has never run on a GPU; only the ``"torch"`` path has produced the accuracy
figures.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import sys
from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from . import ops, reference
from .optimize import (
    FrozenLinear,
    FusedEfficientNet,
    FusedMBConv,
    FusedStem,
    op_backends,
    optimize,
)

__all__ = ["quantize", "load_quantized", "QuantizedEfficientNet", "QuantizedMBConv",
           "QuantizedStem", "QuantizedPointwise", "QuantizedDWConv", "FloatDWConvQuantOut",
           "quant_backends",
           "METHODS", "qparams_from_range", "quantize_weight", "sqnr_db", "layer_sqnr",
           "float_kept_sqnr",
           "logit_sqnr_by_type"]

METHODS = ("minmax", "percentile", "mse")
_INT8_OPS = ("dwconv_int8", "pointwise_int8", "quantize_per_tensor")
_Q_OPS = ("bias_act", "dwconv_bias_act", "se_gate", *_INT8_OPS)


# ----------------------------------------------------------------------------- backends
def quant_backends(backend: str = "auto", device: torch.device | str = "cpu"
                   ) -> tuple[dict[str, str], dict[str, str]]:
    """Per-op backends of the quantized model: ``(backends, substitutions)`` (see the module
    doc; ``optimize.op_backends`` over the int8 model's ops)."""
    try:
        return op_backends(backend, device, _Q_OPS, cpu_auto_torch=_INT8_OPS)
    except RuntimeError as e:
        if backend == "cpu":
            raise RuntimeError(f"{e}; use backend='torch' for the integer reference on the "
                               "CPU") from None
        raise


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


def _dequantize_weight(wq: Tensor, s: Tensor) -> Tensor:
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


def _fake_quant(v: Tensor, lo: float, hi: float) -> Tensor:
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
        return (s - _fake_quant(s, a, b)).pow(2).sum().item()

    best_hi = min((hi * f for f in fracs), key=lambda b: err(lo, b)) if hi > 0 else hi
    best_lo = min((lo * f for f in fracs), key=lambda a: err(a, best_hi)) if lo < 0 else lo
    return best_lo, best_hi


def _corrected_bias(w: Tensor, wq: Tensor, sw: Tensor, bias: Tensor, in_mean: Tensor | None,
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
class _QOut(nn.Module):
    """A module whose output is int8 in (out_scale, out_zp) and whose input is int8 in
    (in_scale, in_zp); the four are 0-d buffers (saved in the state dict) mirrored as Python
    scalars (what the ops take) by ``refresh``."""

    def _init_q(self, in_q: tuple[float, int], out_q: tuple[float, int]) -> None:
        self.register_buffer("in_scale", torch.tensor(float(in_q[0]), dtype=torch.float32))
        self.register_buffer("in_zp", torch.tensor(int(in_q[1]), dtype=torch.int32))
        self.register_buffer("out_scale", torch.tensor(float(out_q[0]), dtype=torch.float32))
        self.register_buffer("out_zp", torch.tensor(int(out_q[1]), dtype=torch.int32))

    def set_q(self, in_q: tuple[float, int] | None = None,
              out_q: tuple[float, int] | None = None) -> None:
        with torch.no_grad():
            if in_q is not None:
                self.in_scale.fill_(float(in_q[0]))
                self.in_zp.fill_(int(in_q[1]))
            if out_q is not None:
                self.out_scale.fill_(float(out_q[0]))
                self.out_zp.fill_(int(out_q[1]))
        self.refresh()

    def refresh(self) -> None:
        self._in = (float(self.in_scale), int(self.in_zp))
        out_scale = float(self.out_scale)
        if not (math.isfinite(out_scale) and out_scale > 0):
            raise ValueError(f"{type(self).__name__}: output scale must be > 0, got {out_scale}")
        self._out = (out_scale, int(self.out_zp))
        self._out_inv = float(torch.tensor(1.0, dtype=torch.float32)
                              / torch.tensor(out_scale, dtype=torch.float32))
        if hasattr(self, "w_scale"):
            # s_in·s_w[c] in float32 (a non-persistent buffer, recomputed from the saved ones)
            self.scale = self.w_scale * self.in_scale
        if hasattr(self, "w_sum"):  # the zero-point correction Σ_ci w[co, ci]
            self.w_sum = self.weight.sum(dim=1, dtype=torch.int32)

    @property
    def in_q(self) -> tuple[float, int]:
        return self._in

    @property
    def out_q(self) -> tuple[float, int]:
        return self._out


class QuantizedPointwise(_QOut):
    """int8 1×1 conv + bias + act (+ gate, + residual) → int8, or the float32 pool (head)."""

    def __init__(self, weight: Tensor, bias: Tensor, act: str, in_q, out_q,
                 backend: str, in_mean: Tensor | None = None) -> None:
        super().__init__()
        w2 = weight.reshape(weight.shape[0], -1)
        wq, sw = quantize_weight(w2)
        self.register_buffer("weight", wq)
        self.register_buffer("w_scale", sw.to(weight.device))
        self.register_buffer("bias", _corrected_bias(w2, wq, sw, bias, in_mean))
        self.register_buffer("scale", torch.empty(0), persistent=False)
        self.register_buffer("w_sum", torch.empty(0, dtype=torch.int32), persistent=False)
        self.act, self.backend = act, backend
        self._init_q(in_q, out_q)
        self.refresh()

    def forward(self, x: Tensor, gate: Tensor | None = None,
                residual: tuple[Tensor, tuple[float, int]] | None = None,
                pool_only: bool = False) -> Tensor:
        r, (rs, rz) = residual if residual is not None else (None, (1.0, 0))
        return ops.pointwise_int8(x, self.weight, self.scale, self.bias, self._in[1],
                                  self._out_inv, self._out[1], self.act, gate, r, rs, rz,
                                  pool_only, w_sum=self.w_sum, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[1]} -> {self.weight.shape[0]}, act={self.act!r}, "
                f"in_q={self._in}, out_q={self._out}, backend={self.backend!r}")


class QuantizedDWConv(_QOut):
    """int8 depthwise conv + bias + act → int8 (+ the float32 SE pool)."""

    def __init__(self, weight: Tensor, bias: Tensor, stride: int, padding, act: str, in_q,
                 out_q, backend: str, in_mean: Tensor | None = None) -> None:
        super().__init__()
        wq, sw = quantize_weight(weight)
        self.register_buffer("weight", wq)
        self.register_buffer("w_scale", sw.to(weight.device))
        # depthwise: channel c's taps all read channel c, so Σ_taps Δw[c]·mean[c]
        self.register_buffer("bias", _corrected_bias(weight.reshape(weight.shape[0], -1), wq,
                                                     sw, bias, in_mean, depthwise=True))
        self.register_buffer("scale", torch.empty(0), persistent=False)
        self.stride, self.padding, self.act, self.backend = stride, padding, act, backend
        self._init_q(in_q, out_q)
        self.refresh()

    def _pads(self, x: Tensor) -> tuple[int, int, int, int]:
        from .nn import _same_pad

        if self.padding != "same":
            return self.padding
        k, s = self.weight.shape[-1], self.stride
        return (*_same_pad(x.shape[-1], k, s), *_same_pad(x.shape[-2], k, s))

    def forward(self, x: Tensor, return_pool: bool = False):
        return ops.dwconv_int8(x, self.weight, self.scale, self.bias, self.stride, self._pads(x),
                               self._in[1], self._out_inv, self._out[1], self.act, return_pool,
                               backend=self.backend)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[0]}, kernel_size={self.weight.shape[-1]}, "
                f"stride={self.stride}, padding={self.padding!r}, act={self.act!r}, "
                f"in_q={self._in}, out_q={self._out}, backend={self.backend!r}")


class QuantizedStem(_QOut):
    """The float stem (``FusedStem``: conv + bias_act in the model's float dtype), then the
    quantise of its output to int8 (in_scale/in_zp unused)."""

    def __init__(self, stem: FusedStem, out_q, backend: str = "auto",
                 quantize_output: bool = True) -> None:
        super().__init__()
        self.float_stem = stem
        self.backend = backend
        self.quantize_output = bool(quantize_output)  # False: the first dw conv is float
        self._init_q((1.0, 0), out_q)
        self.refresh()

    @property
    def weight(self) -> Tensor:
        """The float stem conv's weight (N, 3, k, k)."""
        return self.float_stem.weight

    def forward(self, x: Tensor) -> Tensor:
        y = self.float_stem(x)
        if not self.quantize_output:
            return y
        return ops.quantize_per_tensor(y, self._out_inv, self._out[1], backend=self.backend)

    def extra_repr(self) -> str:
        return f"out_q={self._out}" if self.quantize_output else "output float (first dw float)"


class FloatDWConvQuantOut(_QOut):
    """The first block's depthwise conv kept in float (``FusedDWConvBNAct`` on the float stem
    output, SE pool included), then the quantise of its output to int8. Why: on Lite0 the int8
    weights of this one layer (32 channels, 3×3, reading the stem's ReLU6 output) cost more than
    all the other depthwise layers together — logits 22.3 dB with only its weights int8, ≥ 38 dB
    for any other — and keeping it float costs ≈ 2·H·W·C bytes more than int8 (B0@224: 0.77 MiB of
    13.2 MiB per image) since the stem output is float anyway."""

    is_float = True

    def __init__(self, dw: nn.Module, out_q, backend: str) -> None:
        super().__init__()
        self.float_dw = dw
        self.backend = backend
        self._init_q((1.0, 0), out_q)
        self.refresh()

    def forward(self, x: Tensor, return_pool: bool = False):
        out = self.float_dw(x, return_pool=return_pool)
        y, pool = out if return_pool else (out, None)
        yq = ops.quantize_per_tensor(y, self._out_inv, self._out[1], backend=self.backend)
        return (yq, pool) if return_pool else yq

    def extra_repr(self) -> str:
        return f"float depthwise, out_q={self._out}, quantize backend={self.backend!r}"


class QuantizedMBConv(FusedMBConv):
    """int8 MBConv: [expand] → dw (+pool) → [se_gate, float32] → project (gate, residual).
    FusedMBConv's constructor and kernel count with the int8 modules (QuantizedPointwise,
    QuantizedDWConv / FloatDWConvQuantOut) in its slots."""

    def forward(self, x: Tensor) -> Tensor:
        h = x if self.expand is None else self.expand(x)
        # the block input's quantisation is the residual's: the producer of x is the previous
        # block's project (or the stem), whose out_q is this block's in_q
        first = self.expand if self.expand is not None else self.dw
        res = (x, first.in_q) if self.use_residual else None
        if self.se is None:
            return self.project(self.dw(h), residual=res)
        y, pool = self.dw(h, return_pool=True)
        return self.project(y, gate=self.se.gate(pool), residual=res)


class QuantizedEfficientNet(FusedEfficientNet):
    """INT8 EfficientNet built by :func:`quantize` (see the module doc). Same interface as
    :class:`FusedEfficientNet` (frozen, CUDA graphs, torch.compile): float input, float logits
    in ``dtype`` (the float parts' dtype); ``calibration`` maps each quantised tensor to its
    method, range and (scale, zero point)."""

    def __init__(self, *args, calibration: dict | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calibration = dict(calibration or {})
        self.register_load_state_dict_post_hook(_refresh_after_load)

    def fused_blocks(self) -> list[QuantizedMBConv]:  # type: ignore[override]
        return [m for m in self.blocks.modules() if isinstance(m, QuantizedMBConv)]

    @property
    def num_kernels(self) -> int:
        """stem conv + bias_act + quantise, the blocks' ops, head, classifier."""
        return 3 + sum(b.num_kernels for b in self.fused_blocks()) + 1 + 1

    def refresh(self) -> None:
        for m in self.modules():
            if isinstance(m, _QOut):
                m.refresh()


def _refresh_after_load(module: nn.Module, incompatible_keys) -> None:
    module.refresh()


# ----------------------------------------------------------------------------- building
def _method_for(name: str, method) -> str:
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


def _quant_points(f: FusedEfficientNet) -> list[tuple[str, nn.Module]]:
    """(name, module) of every module whose float output is quantised, in forward order."""
    pts: list[tuple[str, nn.Module]] = [("stem", f.stem)]
    for s, stage in enumerate(f.blocks):
        for j, blk in enumerate(stage):
            if blk.expand is not None:
                pts.append((f"blocks.{s}.{j}.expand", blk.expand))
            pts.append((f"blocks.{s}.{j}.dw", blk.dw))
            pts.append((f"blocks.{s}.{j}", blk))
    return pts


def _progress(it, total, desc, enabled):
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


def _calibrate(f: FusedEfficientNet, batches: Iterable, method, percentile: float,
               max_samples: int, progress: bool, seed: int) -> dict[str, dict]:
    points = _quant_points(f)
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
    for name, mod in _layers(f).items():
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
            for i, xb in enumerate(_progress(iter(batches), total, "calibrating", progress)):
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
        m = _method_for(name, method)
        lo, hi = obs[name].range(m, percentile)
        scale, zp = qparams_from_range(lo, hi)
        out[name] = {"method": m, "range": (min(lo, 0.0), max(hi, 0.0)), "seen": (obs[name].lo,
                     obs[name].hi), "scale": scale, "zero_point": zp}
    means = {name: (v[0] / max(v[1], 1)).float() for name, v in sums.items()}
    return out, means


def _layers(f) -> dict[str, nn.Module]:
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


def _build(f: FusedEfficientNet, calib: dict[str, dict], be: dict[str, str],
           subs: dict[str, str], requested: str, device: torch.device,
           means: dict[str, Tensor] | None = None, first_dw_float: bool = True
           ) -> QuantizedEfficientNet:
    means = means or {}

    def q(name):
        c = calib[name]
        return (c["scale"], c["zero_point"])

    float_stem = copy.deepcopy(f.stem)  # never share (or mutate) the float model's modules
    float_stem.backend = be["bias_act"]
    first = f.blocks[0][0]
    # the first dw stays float only where it reads the stem output directly (no expand)
    first_dw_float = first_dw_float and first.expand is None
    stem = QuantizedStem(float_stem, q("stem"), be["quantize_per_tensor"],
                         quantize_output=not first_dw_float)
    prev = q("stem")
    stages = []
    for s, stage in enumerate(f.blocks):
        blocks = []
        for j, blk in enumerate(stage):
            name = f"blocks.{s}.{j}"
            x_q = prev
            expand = None
            if blk.expand is not None:
                e = blk.expand
                expand = QuantizedPointwise(e.weight, e.bias, e.act, x_q, q(name + ".expand"),
                                            be["pointwise_int8"], means.get(name + ".expand"))
                h_q = q(name + ".expand")
            else:
                h_q = x_q
            d = blk.dw
            if s == 0 and j == 0 and first_dw_float:
                fdw = copy.deepcopy(d)
                fdw.backend = be["dwconv_bias_act"]
                dw = FloatDWConvQuantOut(fdw, q(name + ".dw"), be["quantize_per_tensor"])
            else:
                dw = QuantizedDWConv(d.weight, d.bias, d.stride, d.padding, d.act, h_q,
                                     q(name + ".dw"), be["dwconv_int8"], means.get(name + ".dw"))
            se = None
            if blk.se is not None:
                from .nn import SqueezeExcite

                o = blk.se
                se = SqueezeExcite(o.w1.float(), o.b1.float(), o.w2.float(), o.b2.float(),
                                   backend=be["se_gate"])
            p = blk.project
            project = QuantizedPointwise(p.weight, p.bias, p.act, q(name + ".dw"), q(name),
                                         be["pointwise_int8"], means.get(name + ".project"))
            blocks.append(QuantizedMBConv(expand, dw, se, project, blk.use_residual))
            prev = q(name)
        stages.append(nn.Sequential(*blocks))
    hd = f.head
    head = QuantizedPointwise(hd.weight, hd.bias, hd.act, prev, (1.0, 0), be["pointwise_int8"],
                              means.get("head"))
    classifier = FrozenLinear(f.classifier.weight, f.classifier.bias)
    return QuantizedEfficientNet(stem, nn.Sequential(*stages), head, classifier, backends=be,
                                 substitutions=subs, name=f.name + "_int8",
                                 requested_backend=requested, calibration=calib)


def _float_model(model: nn.Module, dtype) -> FusedEfficientNet:
    if isinstance(model, QuantizedEfficientNet):
        raise TypeError("model is already quantized")
    if isinstance(model, FusedEfficientNet):
        if dtype is not None and dtype != model.dtype:
            raise ValueError(f"dtype={dtype} differs from the optimized model's {model.dtype}; "
                             "optimize the source model with that dtype instead")
        return model
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    if dtype is None:
        dtype = torch.float16 if dev.type == "cuda" else torch.float32
    return optimize(model, backend="auto", dtype=dtype)


def quantize(model: nn.Module, calibration_batches: Iterable, backend: str = "auto", *,
             method="mse", percentile: float = 99.99, max_samples: int = 1 << 19,
             bias_correction: bool = True, first_dw_float: bool = True,
             dtype: torch.dtype | None = None,
             cuda_graph: bool = False, progress: bool = False, seed: int = 0
             ) -> QuantizedEfficientNet:
    """INT8 inference model from ``model`` (see this module's docstring).

    Args:
        model: a :class:`FusedEfficientNet` (``ek.optimize``'s output; its float parts' dtype
            and weights are used), or any model ``ek.optimize`` accepts (optimized first, on
            its device: float32 on the CPU, float16 on a GPU, unless ``dtype``).
        calibration_batches: an iterable of float (N, 3, H, W) image batches (or (images,
            labels) pairs), preprocessed like the inference inputs. Not empty.
        backend: "auto", "cuda", "triton" or "torch" (the integer reference); "cpu" has no int8
            kernels and raises.
        method: "minmax", "percentile" or "mse" (default: best logit SQNR on Lite0 and B0 in
            benchmarks/results/int8_accuracy.md), or a dict of fnmatch patterns over the
            tensor names to methods (first match wins; include "*").
        percentile: the upper percentile for "percentile" (the lower one is 100 − it).
        max_samples: values sampled per tensor for "percentile" / "mse".
        bias_correction: subtract from each int8 layer's bias the mean error its weight
            rounding adds (measured on the calibration data; see ``_corrected_bias``).
        first_dw_float: keep the first block's depthwise conv in float on the float stem output
            (see ``FloatDWConvQuantOut`` for the measurement behind it).
        cuda_graph: capture the forward in CUDA graphs (CUDA models).
        progress: show a progress bar over the calibration batches.

    Raises:
        ValueError: empty calibration data, a batch of the wrong shape or dtype, NaN
            activations, an unknown method. RuntimeError: an unavailable backend.
    """
    if not 50.0 < float(percentile) <= 100.0:
        raise ValueError(f"percentile must be in (50, 100], got {percentile}")
    if isinstance(method, str):
        _method_for("*", method)
    elif not isinstance(method, dict):
        raise TypeError(f"method must be a str or a dict of patterns, got {type(method)}")
    if isinstance(calibration_batches, Tensor):
        raise TypeError("calibration_batches must be an iterable of batches (e.g. a list of "
                        "(N, 3, H, W) tensors or a DataLoader), not a single tensor: wrap it "
                        "in a list")
    f = _float_model(model, dtype)
    be, subs = quant_backends(backend, f.device)
    calib, means = _calibrate(f, calibration_batches, method, float(percentile),
                              int(max_samples), progress, seed)
    qm = _build(f, calib, be, subs, backend, f.device, means if bias_correction else None,
                first_dw_float)
    if cuda_graph:
        if f.device.type != "cuda":
            raise RuntimeError(f"cuda_graph=True needs a CUDA model; it is on {f.device}")
        qm.cuda_graph = True
    return qm


def load_quantized(model: nn.Module, state_dict: dict, backend: str = "auto", *,
                   dtype: torch.dtype | None = None, strict: bool = True,
                   first_dw_float: bool = True) -> QuantizedEfficientNet:
    """Rebuild a quantized model saved with ``torch.save(q.state_dict(), ...)``: ``model`` is the
    float source of the same architecture (its weights are replaced by the saved ones, so any
    initialisation will do)."""
    f = _float_model(model, dtype)
    be, subs = quant_backends(backend, f.device)
    calib = {name: {"method": "loaded", "range": (0.0, 0.0), "seen": (0.0, 0.0), "scale": 1.0,
                    "zero_point": 0} for name, _ in _quant_points(f)}
    qm = _build(f, calib, be, subs, backend, f.device, None, first_dw_float)
    qm.load_state_dict(state_dict, strict=strict)
    return qm


# ----------------------------------------------------------------------------- accuracy tools
def layer_sqnr(q: QuantizedEfficientNet, f: FusedEfficientNet, x: Tensor) -> list[dict]:
    """Where int8 error enters: for every int8 layer of ``q``, the SQNR (dB) of its output
    against the float layer of ``f`` *given the same (float) input, quantised* — each layer's
    own error, not the accumulated one — plus the SQNR of the logits end to end.

    Returns rows ``{"name", "type", "sqnr_db"}``; types: stem (quantising its output), expand,
    dw, dw_pool, project, head_pool, logits.
    """
    rows: list[dict] = []
    cap: dict[str, tuple] = {}
    handles = []
    pts = {"stem": f.stem, **_layers(f)}
    for name, mod in pts.items():
        def hook(_m, args, kwargs, out, name=name):
            cap[name] = (args, kwargs, out)
        handles.append(mod.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            ref_logits = f.forward_eager(x)
    finally:
        for h in handles:
            h.remove()

    qmods = {"stem": q.stem, **_layers(q)}
    block_in_q = {}
    for s, stage in enumerate(q.blocks):
        for j, blk in enumerate(stage):
            block_in_q[f"blocks.{s}.{j}"] = (blk.expand or blk.dw).in_q

    def qz(t, qp):
        return reference.quantize_per_tensor(t.float(), 1.0 / qp[0], qp[1])

    def dq(t, qp):
        return reference.dequantize(t, qp[0], qp[1])

    with torch.no_grad():
        for name, (args, kwargs, out) in cap.items():
            qm = qmods[name]
            if name == "stem":
                if qm.quantize_output:
                    rows.append({"name": name, "type": "stem", "sqnr_db": sqnr_db(
                        out.float(), dq(qz(out, qm.out_q), qm.out_q))})
                continue
            # a float layer (the first dw) takes the float input as it is
            xin = args[0] if getattr(qm, "is_float", False) else qz(args[0], qm.in_q)
            if name == "head":
                pool = qm(xin, pool_only=True)
                rows.append({"name": name, "type": "head_pool",
                             "sqnr_db": sqnr_db(out.float(), pool)})
                continue
            part = name.rsplit(".", 1)[1]
            if part == "dw":
                y, pool = qm(xin, return_pool=True)
                fy, fpool = out if isinstance(out, tuple) else (out, None)
                rows.append({"name": name, "type": "dw",
                             "sqnr_db": sqnr_db(fy.float(), dq(y, qm.out_q))})
                if fpool is not None:
                    rows.append({"name": name, "type": "dw_pool",
                                 "sqnr_db": sqnr_db(fpool.float(), pool)})
                continue
            gate = kwargs.get("gate")
            res = kwargs.get("residual")
            rq = None
            if res is not None:
                bq = block_in_q[name.rsplit(".", 1)[0]]
                rq = (qz(res, bq), bq)
            y = qm(xin, gate=gate, residual=rq)
            rows.append({"name": name, "type": part,
                         "sqnr_db": sqnr_db(out.float(), dq(y, qm.out_q))})
        rows.append({"name": "logits", "type": "logits",
                     "sqnr_db": sqnr_db(ref_logits.float(), q(x).float())})
    return rows


_ABLATION_TYPES = ("stem", "expand", "dw", "project", "head")


def logit_sqnr_by_type(q: QuantizedEfficientNet, f: FusedEfficientNet, x: Tensor,
                       types=_ABLATION_TYPES) -> dict[str, float]:
    """End-to-end view of where the error enters: the logits' SQNR (dB) against ``f`` when only
    one layer type is quantised — its int8 weights and its int8 output, with ``q``'s
    calibration — and everything else runs in float. Simulated in float on ``f`` (weights
    swapped for their dequantised int8 values, outputs rounded to their int8 grid by forward
    hooks): equal to the integer arithmetic up to float rounding (the SE gate's int8 rounding
    is not simulated). Types: stem (its output), expand, dw, project (with the block output it
    writes), head (weights only: the pool stays float); "dw.weight" / "dw.out" split the
    depthwise conv's two error sources. Also ``"all"``: every type at once."""
    with torch.no_grad():
        ref = f.forward_eager(x).float()
    fblocks = [b for st in f.blocks for b in st]
    qblocks = q.fused_blocks()

    def fq(t, qp):  # round onto the int8 grid, back to float in t's dtype
        return reference.dequantize(reference.requantize(t, 1.0 / qp[0], qp[1]),
                                    qp[0], qp[1]).to(t.dtype)

    def run(which) -> float:
        handles, saved = [], []

        def swap(fm, qm):  # the int8 layer's dequantised weights and (corrected) bias
            saved.append((fm, fm.weight, fm.bias))
            w = _dequantize_weight(qm.weight, qm.w_scale)
            fm.weight = w.reshape(fm.weight.shape).to(fm.weight.dtype)
            fm.bias = qm.bias.to(fm.bias.dtype)

        def out_hook(qp):
            def h(_m, _a, out):
                if isinstance(out, tuple):
                    return (fq(out[0], qp),) + tuple(out[1:])
                return fq(out, qp)
            return h

        if "stem" in which and q.stem.quantize_output:
            handles.append(f.stem.register_forward_hook(out_hook(q.stem.out_q)))
        for fb, qb in zip(fblocks, qblocks):
            if "expand" in which and fb.expand is not None:
                swap(fb.expand, qb.expand)
                handles.append(fb.expand.register_forward_hook(out_hook(qb.expand.out_q)))
            if ("dw" in which or "dw.weight" in which) and not getattr(qb.dw, "is_float", False):
                swap(fb.dw, qb.dw)
            if "dw" in which or "dw.out" in which:
                handles.append(fb.dw.register_forward_hook(out_hook(qb.dw.out_q)))
            if "project" in which:
                swap(fb.project, qb.project)
                handles.append(fb.register_forward_hook(out_hook(qb.project.out_q)))
        if "head" in which:
            swap(f.head, q.head)
        try:
            with torch.no_grad():
                return sqnr_db(ref, f.forward_eager(x).float())
        finally:
            for h in handles:
                h.remove()
            for fm, w, b in reversed(saved):
                fm.weight, fm.bias = w, b

    out = {t: run({t}) for t in types}
    out["all"] = run(set(types))
    return out


_FLOAT_KEPT_TYPES = ("stem.in", "stem.weight", "se", "classifier")


def float_kept_sqnr(f: FusedEfficientNet, calib: Tensor, x: Tensor,
                    types=_FLOAT_KEPT_TYPES) -> dict[str, float | None]:
    """The measurement behind what :func:`quantize` keeps in float: the logits' SQNR (dB)
    against ``f`` when only one float-kept layer is made int8 and everything else stays float
    (simulated in float on ``f``, which is restored after). Weights: symmetric per output
    channel (:func:`quantize_weight`); inputs: per tensor, on the min/max range observed on
    ``calib``. Types: "stem.in" (the input image), "stem.weight" (the stem conv's weights),
    "se" (both SE FCs' weights and their inputs — the pool and the SiLU hidden; the gate stays
    float), "classifier" (its weights and the pooled features). A type the model does not
    have (SE in Lite0) maps to None."""
    unknown = set(types) - set(_FLOAT_KEPT_TYPES)
    if unknown:
        raise ValueError(f"unknown float-kept types {sorted(unknown)}; "
                         f"choose from {_FLOAT_KEPT_TYPES}")
    ses = [b.se for st in f.blocks for b in st if b.se is not None]
    ranges: dict[str, list[float]] = {}

    def observe(key: str, t: Tensor) -> Tensor:
        lo, hi = ranges.setdefault(key, [math.inf, -math.inf])
        ranges[key] = [min(lo, t.min().item()), max(hi, t.max().item())]
        return t

    def fake(key: str, t: Tensor) -> Tensor:
        return _fake_quant(t.float(), *ranges[key]).to(t.dtype)

    def deq(w: Tensor) -> Tensor:
        return _dequantize_weight(*quantize_weight(w)).to(w.dtype)

    def run(which: set, on, inp: Tensor) -> Tensor:
        """One forward with ``on(key, tensor)`` applied to the inputs of the chosen types
        (``observe`` to collect ranges, ``fake`` to quantise) and, with ``fake``, the chosen
        weights swapped for their int8 values."""
        handles, saved = [], []

        def swap(m, name):
            saved.append((m, name, getattr(m, name)))
            setattr(m, name, deq(getattr(m, name)))

        if "stem.in" in which:
            handles.append(f.stem.register_forward_pre_hook(
                lambda _m, a: (on("stem.in", a[0]),) + tuple(a[1:])))
        if "stem.weight" in which and on is fake:
            swap(f.stem, "weight")
        if "classifier" in which:
            handles.append(f.classifier.register_forward_pre_hook(
                lambda _m, a: (on("classifier.in", a[0]),) + tuple(a[1:])))
            if on is fake:
                swap(f.classifier, "weight")
        if "se" in which:
            for i, se in enumerate(ses):
                if on is fake:
                    swap(se, "w1")
                    swap(se, "w2")

                def gate(pooled, se=se, i=i):
                    p = on(f"se{i}.in", pooled.float())
                    h = on(f"se{i}.hidden", F.silu(p @ se.w1.float().t() + se.b1.float()))
                    return torch.sigmoid(h @ se.w2.float().t() + se.b2.float())
                se.gate = gate  # instance attribute: shadows the method until deleted
        try:
            with torch.no_grad():
                return f.forward_eager(inp).float()
        finally:
            for h in handles:
                h.remove()
            if "se" in which:
                for se in ses:
                    del se.gate
            for m, name, t in reversed(saved):
                setattr(m, name, t)

    out: dict[str, float | None] = dict.fromkeys(types)
    present = [t for t in out if t != "se" or ses]
    run(set(present), observe, calib)
    with torch.no_grad():
        ref = f.forward_eager(x).float()
    out.update({t: sqnr_db(ref, run({t}, fake, x)) for t in present})
    return out
