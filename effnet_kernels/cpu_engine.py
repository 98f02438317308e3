"""The CPU engine: a :class:`~effnet_kernels.optimize.FusedEfficientNet` forward as one C++ call.

``torch.classes.effnet.CpuEngine`` (``csrc/engine/``) holds the model's folded weights prepacked
for its AVX-512 microkernels (1×1 convs as register-blocked GEMMs with bias / act / residual
fused; NHWC depthwise conv with the SE squeeze; bfloat16 through AVX512_BF16 ``vdpbf16ps`` with
float32 accumulation) and runs stem → blocks → head → classifier on buffers it owns: no Python,
no dispatcher call and no allocation per layer. Layers are spread over ATen's threads
(``torch.set_num_threads``).

:func:`attach` builds it for an optimized model when it can (CPU, float32 or bfloat16, requested
backend ``"auto"`` or ``"cpu"``, a CPU with AVX-512 — and AVX512_BF16 for bfloat16 — and the
active ISA level ``"avx512"``); the model's forward then calls it for plain CPU inputs and runs
the per-op path otherwise (hooks on its modules, ``torch.compile`` / ``torch.export`` tracing,
another ISA level chosen through ``EFFNET_CPU_ISA`` / ``set_cpu_isa``, empty inputs).
``model.cpu_engine`` says which is in use; ``model.use_cpu_engine = False`` turns it off.

The engine copies the weights when it is built: after editing the model's buffers in place,
call ``model.refresh_cpu_engine()`` (``load_state_dict``, ``.to()`` and friends do it).
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import registry

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
    blocks = model.fused_blocks()
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


def _float_layers(model) -> str | None:
    """None when every layer is one the engine knows (the float fused modules), else which is
    not (e.g. the INT8 model's quantized layers)."""
    from .nn import FusedDWConvBNAct, PointwiseConvBNAct, SqueezeExcite
    from .optimize import FrozenLinear, FusedEfficientNet, FusedMBConv, FusedStem
    if type(model) is not FusedEfficientNet:
        return f"{type(model).__name__} is not a float FusedEfficientNet"
    parts = [(model.stem, FusedStem), (model.head, PointwiseConvBNAct),
             (model.classifier, FrozenLinear)]
    for stage in model.blocks:  # stages of blocks, or blocks
        for b in (stage if type(stage) is torch.nn.Sequential else [stage]):
            parts.append((b, FusedMBConv))
            if type(b) is FusedMBConv:
                parts += [(b.dw, FusedDWConvBNAct), (b.project, PointwiseConvBNAct)]
                parts += [(b.expand, PointwiseConvBNAct)] if b.expand is not None else []
                parts += [(b.se, SqueezeExcite)] if b.se is not None else []
    for m, cls in parts:
        if type(m) is not cls:
            return f"layer {type(m).__name__} (the engine runs {cls.__name__})"
    return None


def unsupported_reason(model) -> str | None:
    """Why ``model`` cannot use the engine, or None when it can."""
    if registry._C is None:
        return "the compiled extension is not loaded"
    layers = _float_layers(model)
    if layers is not None:
        return layers
    if model.device.type != "cpu":
        return f"the model is on {model.device}"
    if model.dtype not in DTYPE_CODES:
        return f"dtype {model.dtype} (the engine runs float32 and bfloat16)"
    if model.requested_backend not in ENGINE_BACKENDS:
        return f"backend={model.requested_backend!r} (the engine serves 'auto' and 'cpu')"
    if not hasattr(torch.classes.effnet, "CpuEngine"):
        return "this build of the extension has no CpuEngine"
    return None


def build(model):
    """A new ``CpuEngine`` for ``model``, or ``(None, reason)`` when it cannot have one."""
    reason = unsupported_reason(model)
    if reason is not None:
        return None, reason
    tensors, ints = encode(model)
    try:
        return torch.classes.effnet.CpuEngine(tensors, ints), None
    except RuntimeError as e:  # no AVX-512 / AVX512_BF16, odd widths in bfloat16
        return None, str(e).splitlines()[0]


def isa_allows() -> bool:
    """True while the active CPU ISA level is AVX-512 (EFFNET_CPU_ISA / set_cpu_isa)."""
    return registry._C.cpu_isa() == "avx512"
