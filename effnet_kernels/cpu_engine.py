"""The CPU engine: a :class:`~effnet_kernels.optimize.FusedEfficientNet` forward as one C++ call.

``torch.classes.effnet.CpuEngine`` (``csrc/engine/``) holds the model's folded weights prepacked
for its AVX-512 or AVX2 microkernels (1×1 convs as register-blocked GEMMs with bias / act / residual
fused; NHWC depthwise conv with the SE squeeze; bfloat16 GEMMs on AMX tiles where the CPU has
AMX-BF16, else AVX512_BF16 ``vdpbf16ps``, float32 accumulation either way) and runs stem →
blocks → head → classifier on a workspace it keeps per input shape: no Python and no dispatcher
call per layer. Layers are spread over ATen's threads (``torch.set_num_threads``).

:func:`attach` builds it for an optimized model when it can (CPU, float32 or bfloat16, requested
backend ``"auto"`` or ``"cpu"``, kernels for the active CPU ISA level: ``"avx512"`` runs the
AVX-512 kernels — bfloat16 also needs AVX512_BF16 —, ``"avx2"`` the AVX2 + FMA ones, float32
only; the INT8 engine needs ``"avx512"`` and VNNI); the model's forward then calls it for plain
CPU inputs and runs the per-op path otherwise (hooks on its modules, ``torch.compile`` /
``torch.export`` tracing, the ``"baseline"`` level, empty inputs). The level is
``EFFNET_CPU_ISA`` / ``set_cpu_isa``'s (by default the best this CPU runs); the engine is
rebuilt when it changes.
``model.cpu_engine`` says which is in use; ``model.use_cpu_engine = False`` turns it off.

The engine copies the weights when it is built; the model rebuilds it when any of its buffers
changed (in place: version counters; replaced or reassigned, also by ``functional_call`` or a
module swap: tensor identities), checked before each engine forward. What it does not notice:
edits to module attributes that are not tensors (an ``act`` string, ``use_residual``) — call
``model.refresh_cpu_engine()`` after those.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import registry
from .nn import _hooked

ACT_CODES = {"identity": 0, "relu": 1, "relu6": 2, "silu": 3}
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1}
ENGINE_BACKENDS = ("auto", "cpu")


def _geo(k: int, stride: int, padding) -> list[int]:
    """(k, s, mode, left, right, top, bottom): mode 0 symmetric, 1 TF "same", 2 explicit."""
    if padding == "symmetric":
        return [k, stride, 0, 0, 0, 0, 0]
    if padding == "same":
        return [k, stride, 1, 0, 0, 0, 0]
    return [k, stride, 2, *(int(p) for p in padding)]


def encode(model) -> tuple[list[Tensor], list[int]]:
    """The (tensors, ints) spec of ``CpuEngine(tensors, ints)`` for a FusedEfficientNet."""
    blocks = list(_blocks_in_order(model))
    stem, head = model.stem, model.head
    ints = [1, DTYPE_CODES[model.dtype], len(blocks), ACT_CODES[stem.act], ACT_CODES[head.act],
            *_geo(stem.kernel_size, stem.stride, stem.padding)]
    tensors = [stem.weight, stem.bias]
    for b in blocks:
        e, dw, se, pj = b.expand, b.dw, b.se, b.project
        ints += [int(e is not None), ACT_CODES[e.act] if e is not None else 0, ACT_CODES[dw.act],
                 int(se is not None), ACT_CODES["silu"], int(b.use_residual),
                 *_geo(dw.kernel_size, dw.stride, dw.padding)]
        if e is not None:
            tensors += [e.weight, e.bias]
        tensors += [dw.weight, dw.bias]
        if se is not None:
            tensors += [se.w1, se.b1, se.w2, se.b2]
        tensors += [pj.weight, pj.bias]
    tensors += [head.weight, head.bias, model.classifier.weight, model.classifier.bias]
    return tensors, ints


def _blocks_in_order(model):
    """The blocks as the forward runs them (stages of blocks, or blocks; repeats kept)."""
    for stage in model.blocks:
        yield from (stage if type(stage) is torch.nn.Sequential else [stage])


def _float_layers(model) -> str | None:
    """None when every layer is one the engine knows (the float fused modules), else which is
    not (e.g. the INT8 model's quantized layers)."""
    from .nn import FusedDWConvBNAct, PointwiseConvBNAct, SqueezeExcite
    from .optimize import FrozenLinear, FusedEfficientNet, FusedMBConv, FusedStem
    if type(model) is not FusedEfficientNet:
        return f"{type(model).__name__} is not a float FusedEfficientNet"
    parts = [(model.stem, FusedStem), (model.head, PointwiseConvBNAct),
             (model.classifier, FrozenLinear)]
    for b in _blocks_in_order(model):
        parts.append((b, FusedMBConv))
        if type(b) is FusedMBConv:
            parts += [(b.dw, FusedDWConvBNAct), (b.project, PointwiseConvBNAct)]
            parts += [(b.expand, PointwiseConvBNAct)] if b.expand is not None else []
            parts += [(b.se, SqueezeExcite)] if b.se is not None else []
    for m, cls in parts:
        if type(m) is not cls:
            return f"layer {type(m).__name__} (the engine runs {cls.__name__})"
    for b in _blocks_in_order(model):
        if b.project.act != "identity":
            return f"a projection with act={b.project.act!r} (the engine's is linear)"
    for name, t in model.named_buffers():
        if t.device.type != "cpu" or t.dtype != model.dtype:
            return f"buffer {name} is {t.dtype} on {t.device} (the model: {model.dtype} on cpu)"
    return None


# ---------------------------------------------------------------------------- INT8 engine
INT8_OPS = ("bias_act", "dwconv_bias_act", "se_gate", "dwconv_int8", "pointwise_int8",
            "quantize_per_tensor")


def _is_int8(model) -> bool:
    from .quant.modules import QuantizedEfficientNet
    return type(model) is QuantizedEfficientNet


def _int8_layers(model) -> str | None:
    """None when ``model`` (a QuantizedEfficientNet) is made of the layers the INT8 engine runs,
    all bound to the C++ CPU ops (whose results it reproduces bit for bit), else why not."""
    from .nn import FusedDWConvBNAct, SqueezeExcite
    from .optimize import FrozenLinear, FusedStem
    from .quant.modules import (FloatDWConvQuantOut, QuantizedDWConv, QuantizedMBConv,
                                QuantizedPointwise, QuantizedStem)
    parts = [(model.stem, QuantizedStem), (model.stem.float_stem, FusedStem),
             (model.head, QuantizedPointwise), (model.classifier, FrozenLinear)]
    blocks = list(_blocks_in_order(model))
    if not blocks:
        return "a model without blocks"
    for i, b in enumerate(blocks):
        parts.append((b, QuantizedMBConv))
        if type(b) is not QuantizedMBConv:
            continue
        if type(b.dw) is FloatDWConvQuantOut:
            if i != 0 or b.expand is not None or model.stem.quantize_output:
                return "a float depthwise conv outside the first block"
            parts.append((b.dw.float_dw, FusedDWConvBNAct))
        else:
            parts.append((b.dw, QuantizedDWConv))
        parts += [(b.project, QuantizedPointwise)]
        parts += [(b.expand, QuantizedPointwise)] if b.expand is not None else []
        parts += [(b.se, SqueezeExcite)] if b.se is not None else []
    for m, cls in parts:
        if type(m) is not cls:
            return f"layer {type(m).__name__} (the INT8 engine runs {cls.__name__})"
    if type(blocks[0].dw) is not FloatDWConvQuantOut and not model.stem.quantize_output:
        return "a float stem output without a float first depthwise conv"
    if type(blocks[0].dw) is FloatDWConvQuantOut and blocks[0].use_residual:
        return "a residual around the float first depthwise conv"
    for b in blocks:
        if b.project.act != "identity":
            return f"a projection with act={b.project.act!r} (the engine's is linear)"
    for op in INT8_OPS:
        be = model.backends.get(op, "cpu")
        if be != "cpu":
            return f"{op} runs on backend {be!r} (the INT8 engine reproduces the 'cpu' ops)"
    for name, t in model.named_buffers():
        if t.device.type != "cpu":
            return f"buffer {name} is on {t.device}"
    return None


def _q_ints(m) -> list[int]:
    """(act, in_zp, out_zp) of an int8 layer."""
    return [ACT_CODES[m.act], m.in_q[1], m.out_q[1]]


def encode_int8(model) -> tuple[list[Tensor], list[int], list[float]]:
    """The (tensors, ints, floats) spec of ``CpuEngineInt8`` for a QuantizedEfficientNet."""
    from .quant.modules import FloatDWConvQuantOut
    blocks = list(_blocks_in_order(model))
    stem, fs, head = model.stem, model.stem.float_stem, model.head
    exact = int(bool(getattr(model, "exact_cpu_engine", False)))
    ints = [2, len(blocks), ACT_CODES[fs.act], int(stem.quantize_output), stem.out_q[1],
            ACT_CODES[head.act], head.in_q[1], exact, *_geo(fs.kernel_size, fs.stride, fs.padding)]
    floats = [stem._out_inv]
    tensors = [fs.weight, fs.bias]
    for b in blocks:
        e, dw, se, pj = b.expand, b.dw, b.se, b.project
        dw_float = type(dw) is FloatDWConvQuantOut
        geo_src = dw.float_dw if dw_float else dw
        k = geo_src.weight.shape[-1]
        first = e if e is not None else dw
        ints += [int(e is not None), int(se is not None), int(b.use_residual), int(dw_float),
                 *_geo(k, geo_src.stride, geo_src.padding),
                 *(_q_ints(e) if e is not None else [0, 0, 0]),
                 ACT_CODES[geo_src.act], 0 if dw_float else dw.in_q[1], dw.out_q[1],
                 pj.in_q[1], pj.out_q[1], first.in_q[1]]
        floats += [e._out_inv if e is not None else 1.0, dw._out_inv, pj._out_inv,
                   first.in_q[0]]
        if e is not None:
            tensors += [e.weight, e.scale, e.bias]
        if dw_float:
            tensors += [dw.float_dw.weight, dw.float_dw.bias]
        else:
            tensors += [dw.weight, dw.scale, dw.bias]
        if se is not None:
            tensors += [se.w1, se.b1, se.w2, se.b2]
        tensors += [pj.weight, pj.scale, pj.bias]
    tensors += [head.weight, head.scale, head.bias, model.classifier.weight,
                model.classifier.bias]
    return tensors, ints, floats


def unsupported_reason(model) -> str | None:
    """Why ``model`` cannot use the engine (``CpuEngine``, or ``CpuEngineInt8`` for the INT8
    model), or None when it can."""
    if registry._C is None:
        return "the compiled extension is not loaded"
    int8 = _is_int8(model)
    layers = _int8_layers(model) if int8 else _float_layers(model)
    if layers is not None:
        return layers
    if model.device.type != "cpu":
        return f"the model is on {model.device}"
    if int8 and model.dtype != torch.float32:
        return f"float parts in {model.dtype} (the INT8 engine's are float32)"
    if not int8 and model.dtype not in DTYPE_CODES:
        return f"dtype {model.dtype} (the engine runs float32 and bfloat16)"
    if model.requested_backend not in ENGINE_BACKENDS:
        return f"backend={model.requested_backend!r} (the engine serves 'auto' and 'cpu')"
    cls = "CpuEngineInt8" if int8 else "CpuEngine"
    if not hasattr(torch.classes.effnet, cls):
        return f"this build of the extension has no {cls}"
    return None


def build(model):
    """A new ``CpuEngine`` (``CpuEngineInt8`` for the INT8 model) for ``model``, or
    ``(None, reason)`` when it cannot have one."""
    reason = unsupported_reason(model)
    if reason is not None:
        return None, reason
    try:
        if _is_int8(model):
            return EngineRef(torch.classes.effnet.CpuEngineInt8(*encode_int8(model))), None
        return EngineRef(torch.classes.effnet.CpuEngine(*encode(model))), None
    except (RuntimeError, ValueError) as e:  # no AVX-512 / AVX512_BF16, odd widths in bf16,
        return None, str(e).splitlines()[0]   # a depthwise kernel over 15, ...


class EngineRef:
    """An engine (a ``torch.classes`` ScriptObject) held in a plain Python object: the model
    keeps it as an attribute, and ``torch.export`` fakifies every ScriptObject it finds among a
    module's attributes (it cannot: the engine has no ``__obj_flatten__``) — the export traces
    the per-op path anyway. Attribute access goes to the engine."""

    __slots__ = ("obj",)

    def __init__(self, obj) -> None:
        self.obj = obj

    def __getattr__(self, name: str):
        if name == "obj":  # unset slot (a copy made without __init__): no recursion
            raise AttributeError(name)
        return getattr(self.obj, name)


def _stamp(t: Tensor) -> int:
    """A tensor's version counter (bumped by every in-place write); inference tensors have
    none: their data pointer."""
    return t.data_ptr() if t.is_inference() else t._version


class Snapshot:
    """What an engine was built from, checked before each engine forward in flat loops (~40 µs
    for B0, against ~180 µs for walking the module tree): every module's buffers (identity and
    version), every parent → child link (a swapped module), and the modules themselves (for
    hooks)."""

    __slots__ = ("modules", "buffers", "children")

    def __init__(self, model) -> None:
        self.modules = list(model.modules())
        self.buffers = [(m._buffers, n, t, _stamp(t)) for m in self.modules
                        for n, t in m._buffers.items() if t is not None]
        self.children = [(m._modules, n, c) for m in self.modules for n, c in m._modules.items()]

    def changed(self) -> bool:
        for d, n, t, v in self.buffers:
            u = d.get(n)
            if u is not t or _stamp(u) != v:
                return True
        return any(d.get(n) is not c for d, n, c in self.children)

    def hooked(self) -> bool:
        return any(_hooked(m) for m in self.modules)


def uses_engine(x) -> bool:
    """True when ``x`` is a plain CPU float tensor outside any tracing or dispatch mode (fake
    tensors, ``torch.jit.trace``, ``TorchDispatchMode``s, ``torch.compile``/``export``)."""
    return (type(x) is torch.Tensor and x.device.type == "cpu" and x.dim() == 4
            and x.is_floating_point() and x.numel() > 0 and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing() and _dispatch_mode() is None)


def _dispatch_mode():
    from torch.utils._python_dispatch import _get_current_dispatch_mode
    return _get_current_dispatch_mode()


def active_isa() -> str | None:
    """The active CPU ISA level (EFFNET_CPU_ISA / set_cpu_isa): an engine is built for it
    (the float engine's AVX-512 or AVX2 kernels, the INT8 engine's AVX-512 VNNI ones) and
    rebuilt when it changes. None without the extension."""
    return registry._C.cpu_isa() if registry._C is not None else None
