"""The INT8 modules: int8 1×1 and depthwise convs bound to their ops, the float stem and first
depthwise conv with a quantised output, the int8 MBConv block and the whole model."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .. import checks, ops, reference
from ..nn import BoundOp, as_nhwc, input_ok, pointwise_extras_ok
from ..optimize import FusedEfficientNet, FusedMBConv, FusedStem
from .calibration import corrected_bias, quantize_weight


class _QOut(BoundOp):
    """A module whose output is int8 in (out_scale, out_zp) and whose input is int8 in
    (in_scale, in_zp); the four are 0-d buffers (saved in the state dict) mirrored as Python
    scalars (what the ops take) by ``refresh``. ``op`` (if any) is bound once by ``bind``."""


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

    op = "pointwise_int8"

    def __init__(self, weight: Tensor, bias: Tensor, act: str, in_q, out_q,
                 backend: str, in_mean: Tensor | None = None) -> None:
        super().__init__()
        w2 = weight.reshape(weight.shape[0], -1)
        wq, sw = quantize_weight(w2)
        self.register_buffer("weight", wq)
        self.register_buffer("w_scale", sw.to(weight.device))
        self.register_buffer("bias", corrected_bias(w2, wq, sw, bias, in_mean))
        self.register_buffer("scale", torch.empty(0), persistent=False)
        self.register_buffer("w_sum", torch.empty(0, dtype=torch.int32), persistent=False)
        self.act = checks.act(act, self.op)
        self.bind(backend, weight.device)
        self._init_q(in_q, out_q)
        self.refresh()

    def forward(self, x: Tensor, gate: Tensor | None = None,
                residual: tuple[Tensor, tuple[float, int]] | None = None,
                pool_only: bool = False) -> Tensor:
        r, (rs, rz) = residual if residual is not None else (None, (1.0, 0))
        buf = self._buffers
        w = buf["weight"]
        if r is not None:
            r = as_nhwc(r)
        if not (input_ok(x, w, w.shape[1]) and pointwise_extras_ok(x, w, gate, r, pool_only)):
            x = as_nhwc(x)  # raises below
            checks.nhwc(x, self.op, dtypes=checks.INT8)
            if x.shape[1] != w.shape[1]:
                raise ValueError(f"{self.op}: x has {x.shape[1]} channels, the layer "
                                 f"{w.shape[1]}")
            checks.same_device(x, w.device, self.op, "x", "the layer")
            ops.check_pointwise_input(x, w.shape[0], gate, r, pool_only, self.op,
                                      dtypes=checks.INT8)
        x = x.contiguous(memory_format=torch.channels_last)
        args = (x, w, buf["scale"], buf["bias"], self._in[1], self._out_inv, self._out[1],
                self.act, gate, r, rs, rz, pool_only)
        if getattr(self._fn, "namespace", None) == "effnet_triton":
            return self._fn(*args, buf["w_sum"])
        return self._fn(*args)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[1]} -> {self.weight.shape[0]}, act={self.act!r}, "
                f"in_q={self._in}, out_q={self._out}, backend={self.backend!r}")


class QuantizedDWConv(_QOut):
    """int8 depthwise conv + bias + act → int8 (+ the float32 SE pool)."""

    op = "dwconv_int8"

    def __init__(self, weight: Tensor, bias: Tensor, stride: int, padding, act: str, in_q,
                 out_q, backend: str, in_mean: Tensor | None = None) -> None:
        super().__init__()
        wq, sw = quantize_weight(weight)
        self.register_buffer("weight", wq)
        self.register_buffer("w_scale", sw.to(weight.device))
        # depthwise: channel c's taps all read channel c, so Σ_taps Δw[c]·mean[c]
        self.register_buffer("bias", corrected_bias(weight.reshape(weight.shape[0], -1), wq,
                                                     sw, bias, in_mean, depthwise=True))
        self.register_buffer("scale", torch.empty(0), persistent=False)
        self.stride, self.padding, self.act = stride, padding, checks.act(act, self.op)
        self.bind(backend, weight.device)
        self._init_q(in_q, out_q)
        self.refresh()

    def _pads(self, x: Tensor) -> list[int]:
        k = self.weight.shape[-1]
        pads = self.padding if self.padding != "same" else reference.conv_pads(
            "same", x.shape[-2], x.shape[-1], k, self.stride)
        return list(checks.dw_geometry(x.shape[-2], x.shape[-1], k, self.stride, pads, self.op))

    def forward(self, x: Tensor, return_pool: bool = False):
        buf = self._buffers
        w = buf["weight"]
        if not input_ok(x, w, w.shape[0]):
            x = as_nhwc(x)  # raises below
            checks.nhwc(x, self.op, dtypes=checks.INT8)
            if x.shape[1] != w.shape[0]:
                raise ValueError(f"{self.op}: x has {x.shape[1]} channels, the layer "
                                 f"{w.shape[0]}")
            checks.same_device(x, w.device, self.op, "x", "the layer")
        x = x.contiguous(memory_format=torch.channels_last)
        y, pool = self._fn(x, w, buf["scale"], buf["bias"], self.stride, self._pads(x),
                           self._in[1], self._out_inv, self._out[1], self.act, return_pool)
        return (y, pool) if return_pool else y

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[0]}, kernel_size={self.weight.shape[-1]}, "
                f"stride={self.stride}, padding={self.padding!r}, act={self.act!r}, "
                f"in_q={self._in}, out_q={self._out}, backend={self.backend!r}")


class QuantizedStem(_QOut):
    """The float stem (``FusedStem``: conv + bias_act in the model's float dtype), then the
    quantise of its output to int8 (in_scale/in_zp unused)."""

    op = "quantize_per_tensor"

    def __init__(self, stem: FusedStem, out_q, backend: str = "auto",
                 quantize_output: bool = True) -> None:
        super().__init__()
        self.float_stem = stem
        self.bind(backend, stem.weight.device)
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
        return self._fn(y, self._out_inv, self._out[1])

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
    op = "quantize_per_tensor"

    def __init__(self, dw: nn.Module, out_q, backend: str) -> None:
        super().__init__()
        self.float_dw = dw
        self.bind(backend, dw.weight.device)
        self._init_q((1.0, 0), out_q)
        self.refresh()

    def forward(self, x: Tensor, return_pool: bool = False):
        out = self.float_dw(x, return_pool=return_pool)
        y, pool = out if return_pool else (out, None)
        yq = self._fn(y, self._out_inv, self._out[1])
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
        #: the CPU engine (effnet_kernels.cpu_engine) in its exact mode: the float parts as the
        #: per-op path computes them and the exact SiLU, logits bit-identical to the per-op CPU
        #: path. False (default): the fast mode (the float parts on the float engine's kernels,
        #: fast SiLU, FMA epilogues; within the INT8 contract: an int8 value may differ by 1 LSB
        #: where it sits on a rounding boundary), deterministic (bit-identical at any thread
        #: count and batch composition). Setting it rebuilds the engine at the next forward.
        self.exact_cpu_engine = False
        self.register_load_state_dict_post_hook(_refresh_after_load)

    @property
    def exact_cpu_engine(self) -> bool:
        return self.__dict__.get("_exact_cpu_engine", False)

    @exact_cpu_engine.setter
    def exact_cpu_engine(self, value: bool) -> None:
        self.__dict__["_exact_cpu_engine"] = bool(value)
        self._cpu_engine_stale = True  # rebuilt in the new mode at the next forward

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
