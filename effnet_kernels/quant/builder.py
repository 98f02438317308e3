"""``quantize`` and ``load_quantized``: the INT8 model from a float one."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from .. import registry
from ..nn import SqueezeExcite
from ..optimize import FrozenLinear, FusedEfficientNet, optimize
from .calibration import calibrate, method_for, quant_points
from .modules import (
    FloatDWConvQuantOut,
    QuantizedDWConv,
    QuantizedEfficientNet,
    QuantizedMBConv,
    QuantizedPointwise,
    QuantizedStem,
)

INT8_OPS = ("dwconv_int8", "pointwise_int8", "quantize_per_tensor")
MODEL_OPS = ("bias_act", "dwconv_bias_act", "se_gate", *INT8_OPS)


def _build(f: FusedEfficientNet, calib: dict[str, dict], be: dict[str, str],
           subs: dict[str, str], requested: str, device: torch.device,
           means: dict[str, Tensor] | None = None, first_dw_float: bool = True
           ) -> QuantizedEfficientNet:
    means = means or {}

    def q(name):
        c = calib[name]
        return (c["scale"], c["zero_point"])

    float_stem = copy.deepcopy(f.stem)  # never share (or mutate) the float model's modules
    float_stem.bind(be["bias_act"])
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
                fdw.bind(be["dwconv_bias_act"])
                dw = FloatDWConvQuantOut(fdw, q(name + ".dw"), be["quantize_per_tensor"])
            else:
                dw = QuantizedDWConv(d.weight, d.bias, d.stride, d.padding, d.act, h_q,
                                     q(name + ".dw"), be["dwconv_int8"], means.get(name + ".dw"))
            se = None
            if blk.se is not None:
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
        backend: "auto", "cuda", "triton", "cpu" or "torch" (the integer reference).
        method: "minmax", "percentile" or "mse" (default: best logit SQNR on Lite0 and B0 in
            benchmarks/results/int8_accuracy.md), or a dict of fnmatch patterns over the
            tensor names to methods (first match wins; include "*").
        percentile: the upper percentile for "percentile" (the lower one is 100 − it).
        max_samples: values sampled per tensor for "percentile" / "mse".
        bias_correction: subtract from each int8 layer's bias the mean error its weight
            rounding adds (measured on the calibration data; see ``corrected_bias``).
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
        method_for("*", method)
    elif not isinstance(method, dict):
        raise TypeError(f"method must be a str or a dict of patterns, got {type(method)}")
    if isinstance(calibration_batches, Tensor):
        raise TypeError("calibration_batches must be an iterable of batches (e.g. a list of "
                        "(N, 3, H, W) tensors or a DataLoader), not a single tensor: wrap it "
                        "in a list")
    f = _float_model(model, dtype)
    be, subs = registry.resolve_all(MODEL_OPS, backend, f.device)
    calib, means = calibrate(f, calibration_batches, method, float(percentile),
                              int(max_samples), progress, seed)
    qm = _build(f, calib, be, subs, backend, f.device, means if bias_correction else None,
                first_dw_float)
    _warn_slow_cpu_int8(f.device, backend)
    if cuda_graph:
        if f.device.type != "cuda":
            raise RuntimeError(f"cuda_graph=True needs a CUDA model; it is on {f.device}")
        qm.cuda_graph = True
    return qm


def _warn_slow_cpu_int8(device: torch.device, backend: str) -> None:
    """On a CPU without the AVX-512 VNNI kernels the INT8 model runs the exact integer ops
    (reference or scalar C++): measured on an AVX2-only Zen 3 at 1 thread, Lite0 batch 1 takes
    ~50-60 ms in INT8 against ~13 ms for the float engine. Say so rather than let a user
    quantize for speed and get a model several times slower."""
    if device.type == "cpu" and backend in ("auto", "cpu") and not registry._vnni_active():
        warnings.warn("ek.quantize: this CPU has no AVX-512 VNNI (or a lower CPU ISA level is "
                      "active), so the INT8 model runs the exact integer reference ops, several "
                      "times slower than the float model (ek.optimize); the INT8 fast path and "
                      "engine need AVX-512 VNNI", UserWarning, stacklevel=3)


def load_quantized(model: nn.Module, state_dict: dict, backend: str = "auto", *,
                   dtype: torch.dtype | None = None, strict: bool = True,
                   first_dw_float: bool = True) -> QuantizedEfficientNet:
    """Rebuild a quantized model saved with ``torch.save(q.state_dict(), ...)``: ``model`` is the
    float source of the same architecture (its weights are replaced by the saved ones, so any
    initialisation will do)."""
    f = _float_model(model, dtype)
    be, subs = registry.resolve_all(MODEL_OPS, backend, f.device)
    calib = {name: {"method": "loaded", "range": (0.0, 0.0), "seen": (0.0, 0.0), "scale": 1.0,
                    "zero_point": 0} for name, _ in quant_points(f)}
    qm = _build(f, calib, be, subs, backend, f.device, None, first_dw_float)
    qm.load_state_dict(state_dict, strict=strict)
    _warn_slow_cpu_int8(f.device, backend)
    return qm
