"""``ek.optimize()``: the frozen, fused EfficientNet inference model.

``f = ek.optimize(model, backend="auto", dtype=None, cuda_graph=False)`` takes an
effnet_kernels :class:`~effnet_kernels.models.efficientnet.EfficientNet` (B0–B7, Lite0–4), or a
torchvision / timm / efficientnet_pytorch EfficientNet (converted first with
:mod:`effnet_kernels.convert`), and returns a new :class:`FusedEfficientNet`. The input model is
never modified (weights are read, folded and copied; its train/eval mode does not matter: BN is
folded from its running statistics, i.e. eval-mode BN).

What runs per image (kernels on the ``cpu``/``cuda``/``triton`` backends)::

    input     x.to(dtype, memory_format=channels_last)        the one layout change (+ cast)
    stem      F.conv2d 3×3 s2 (BN-folded weight, no bias;     cuDNN / oneDNN, 2 kernels
              symmetric or TF-"same" pads, F.pad only when
              the pads are asymmetric) → ops.bias_act
    MBConv    [expand ops.pointwise_conv(bias + act)]          2–4 kernels per block
              → ops.dwconv_bias_act(return_pool=SE)
              → [ops.se_gate(pool)]
              → project ops.pointwise_conv(gate=SE gate, residual=x if residual)
    head      ops.pointwise_conv(pool_only=True)               conv_head + BN + act + avg pool
    classifier F.linear (dropout is the identity at inference)

On a CPU with AVX-512 (bf16: and AVX512_BF16) the float model (backend "auto"/"cpu") runs all
of this as one call into the C++ engine (:mod:`effnet_kernels.cpu_engine`; ``f.cpu_engine`` says
whether), with the per-op path for hooks, tracing and everything else.

A B0 block with expansion and SE is 4 kernels (eager PyTorch: ~14); stage-1 blocks (no expansion)
are 3; Lite blocks (no SE) 3, and 2 in stage 1. All activations stay channels_last; nothing is
materialised between the fused ops (the SE-scaled tensor and the head activation map never are).

Backends (docs/ARCHITECTURE.md, "The registry"), resolved once at construction, per op (``f.backends``):

* ``"auto"``: per op, the best available on the weights' device (cuda → triton → torch on a
  GPU, cpu → torch on the CPU; ``pointwise_conv`` has no CUDA kernel, so on a GPU it is Triton).
  If an op ends up on ``"torch"`` on a GPU (no CUDA build and no Triton) a warning says so.
* ``"cuda"``: the csrc CUDA kernels; ``pointwise_conv`` has none and runs its **Triton** kernel
  instead (shown in ``f.backends``, ``f.substitutions`` and the repr). If Triton is missing too,
  ``RuntimeError`` — never a silent fall back to ``"torch"``.
* ``"triton"``, ``"cpu"``, ``"torch"``: every op on that backend.

A requested backend that is not available raises ``RuntimeError`` naming what is missing. The stem
conv and the classifier are always PyTorch's own (cuDNN / oneDNN / cuBLAS) ops.

dtype: ``dtype=torch.float16 / torch.bfloat16 / torch.float32`` (default: the source's dtype).
BN is folded in float64 and every weight (SE and classifier included) is cast once to ``dtype``;
inputs are cast on entry; the SE pool and gate and the head pool are float32 (the ops'
contract); logits come back in ``dtype``.

CUDA graphs (``cuda_graph=True``, CUDA only): the forward is captured per (input shape, model
dtype, device) after a warm-up on a side stream (torch's documented recipe), then replayed. Each
call copies the input into the static input buffer (casting dtype and layout on the way, so the
input's own dtype and layout never trigger a re-capture), replays on the current stream and
returns a **clone** of the static output (safe to keep). The last ``graph_cache_size`` (default
8) graphs are kept, each in its own private memory pool. Not for concurrent use of one module
from several streams or threads. Under ``torch.compile`` the graph path is skipped (use
``mode="reduce-overhead"`` there instead).

``torch.compile(f, fullgraph=True)`` works (the ops have fake kernels; all shape logic — padding,
validation — is Python on static shapes); so does ``torch.inference_mode()``. The module is
frozen: weights are buffers, it has no parameters, and ``f.train()`` raises.

Moving the module with ``.to(device)`` after construction binds every op again for the new
device type with the backend asked for (``nn.BoundOp``): ``"auto"`` picks the new device's
best (``f.backends`` follows), an explicit backend that cannot run there (``"cpu"`` on CUDA
tensors) makes each call raise that backend's error — never a silent switch. Calling
``optimize`` on the target device is the clearer way.
"""

from __future__ import annotations

import sys
import warnings
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import cpu_engine, ops, reference, registry
from .models.efficientnet import ConvBNAct, EfficientNet, MBConv
from .nn import (
    BoundOp,
    FusedDWConvBNAct,
    PointwiseConvBNAct,
    SqueezeExcite,
    act_name,
    call,
    fold_bn,
    run_sequential,
)

__all__ = ["optimize", "op_backends", "FUSED_OPS", "FusedEfficientNet", "FusedMBConv", "FusedStem",
           "FrozenLinear"]

# The fused ops the float model uses (``registry.resolve_all`` picks each one's backend).
FUSED_OPS = ("bias_act", "dwconv_bias_act", "se_gate", "pointwise_conv")


def op_backends(backend: str = "auto", device: torch.device | str = "cpu",
                op_names: tuple[str, ...] = FUSED_OPS) -> tuple[dict[str, str], dict[str, str]]:
    """Per-op backends of a model built for ``backend`` on ``device``: ``(backends,
    substitutions)`` (``registry.resolve_all``; e.g. ``pointwise_conv`` on "cuda" runs on
    "triton", and ``substitutions`` says so)."""
    return registry.resolve_all(op_names, backend, device)


# ----------------------------------------------------------------------------- modules
class FusedStem(BoundOp):
    """Stem: k×k stride-s full conv with BN folded (``F.conv2d``, no bias) → ``ops.bias_act``.

    Padding ``"symmetric"`` ((k−1)/2 each side, passed to the conv) or ``"same"`` (TF, from
    each input's size; the extra pixel right/bottom needs an ``F.pad``). Input channels_last in
    the weight's dtype; output channels_last.

    Why conv + ``bias_act`` and not a conv with bias + PyTorch's act: the act then runs on the
    requested backend like every other op. On a GPU in fp32, cuDNN runs this conv in TF32 unless
    ``torch.backends.cudnn.allow_tf32`` is off.
    """

    op = "bias_act"

    def __init__(self, weight: Tensor, bias: Tensor, stride: int, padding: str, act: str,
                 backend: str) -> None:
        super().__init__()
        if padding not in ("symmetric", "same"):
            raise ValueError(f"padding must be 'symmetric' or 'same', got {padding!r}")
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", bias.detach().clone())
        self.kernel_size, self.stride, self.padding = weight.shape[-1], int(stride), padding
        self.act = act_name(act)
        self.bind(backend, weight.device)

    def pads(self, h: int, w: int) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) for an h×w input."""
        return reference.conv_pads(self.padding, h, w, self.kernel_size, self.stride)

    def forward(self, x: Tensor) -> Tensor:
        left, right, top, bottom = self.pads(x.shape[-2], x.shape[-1])
        if left == right and top == bottom:
            y = F.conv2d(x, self.weight, None, self.stride, (top, left))
        else:
            y = F.conv2d(F.pad(x, (left, right, top, bottom)), self.weight, None, self.stride)
        # cuDNN / oneDNN return channels_last for a channels_last input: a no-op then.
        y = y.contiguous(memory_format=torch.channels_last)
        return self._fn(y, self.bias, self.act)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[1]} -> {self.weight.shape[0]}, kernel_size="
                f"{self.kernel_size}, stride={self.stride}, padding={self.padding!r}, "
                f"act={self.act!r}, conv='F.conv2d', backend={self.backend!r}")


class FusedMBConv(nn.Module):
    """One MBConv block as 2–4 fused ops (``num_kernels``):

    [expand pointwise_conv + bias + act] → dwconv_bias_act (+ the SE pool in the same pass)
    → [se_gate(pool)] → project pointwise_conv(gate=…, residual=x if use_residual).
    """

    def __init__(self, expand: PointwiseConvBNAct | None, dw: FusedDWConvBNAct,
                 se: SqueezeExcite | None, project: PointwiseConvBNAct,
                 use_residual: bool) -> None:
        super().__init__()
        self.expand, self.dw, self.se, self.project = expand, dw, se, project
        self.use_residual = bool(use_residual)

    @property
    def num_kernels(self) -> int:
        """Fused kernels this block launches (one per fused module)."""
        return sum(m is not None for m in (self.expand, self.dw, self.se, self.project))

    def forward(self, x: Tensor) -> Tensor:
        m = self._modules  # one dict read per part (no nn.Module.__getattr__)
        expand, dw, se, project = m.get("expand"), m["dw"], m.get("se"), m["project"]
        h = x if expand is None else call(expand, x)
        res = x if self.use_residual else None
        if se is None:
            return call(project, call(dw, h), residual=res)
        y, pool = call(dw, h, return_pool=True)
        return call(project, y, gate=se.gate(pool), residual=res)

    def extra_repr(self) -> str:
        return f"use_residual={self.use_residual}, num_kernels={self.num_kernels}"


class FrozenLinear(nn.Module):
    """The classifier: ``F.linear`` with frozen (buffer) weight and bias."""

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]} -> {self.weight.shape[0]}"


class _Graph:
    __slots__ = ("graph", "static_in", "static_out")

    def __init__(self, graph, static_in, static_out):
        self.graph, self.static_in, self.static_out = graph, static_in, static_out


class FusedEfficientNet(nn.Module):
    """Frozen fused EfficientNet inference model, built by :func:`optimize` (see the module doc).

    Attributes: ``stem`` (:class:`FusedStem`), ``blocks`` (stages of :class:`FusedMBConv`, as
    in the source), ``head`` (``PointwiseConvBNAct``, called with ``pool_only=True``),
    ``classifier`` (:class:`FrozenLinear`); ``backends`` (op → backend, plus ``stem_conv`` and
    ``classifier``, always PyTorch's), ``substitutions`` (ops running off the requested backend,
    e.g. ``pointwise_conv`` on Triton for ``backend="cuda"``), ``cuda_graph``, ``name``,
    ``num_kernels``. Refuses ``train()``.
    """

    graph_cache_size = 8
    graph_warmup_iters = 3

    def __init__(self, stem: FusedStem, blocks: nn.Sequential, head: PointwiseConvBNAct,
                 classifier: FrozenLinear, *, backends: dict[str, str],
                 substitutions: dict[str, str] | None = None, cuda_graph: bool = False,
                 name: str = "efficientnet", requested_backend: str = "auto") -> None:
        super().__init__()
        self.stem, self.blocks, self.head, self.classifier = stem, blocks, head, classifier
        self.backends = {"stem_conv": "torch (F.conv2d)", **backends,
                         "classifier": "torch (F.linear)"}
        self.substitutions = dict(substitutions or {})
        self.requested_backend = requested_backend
        self.name = name
        if cuda_graph and self.device.type != "cuda":
            raise RuntimeError("cuda_graph=True needs the model on a CUDA device; its weights "
                               f"are on {self.device}")
        self.cuda_graph = bool(cuda_graph)
        self._graphs: OrderedDict = OrderedDict()
        super().train(False)
        #: run CPU forwards through the C++ engine when it can (see effnet_kernels.cpu_engine)
        self.use_cpu_engine = True
        self._cpu_engine = None
        self._cpu_engine_reason: str | None = None
        self._cpu_engine_stale = True
        self._cpu_engine_key: cpu_engine.Snapshot | None = None
        self._cpu_engine_isa: str | None = None  # the CPU ISA level it was built (or refused) at
        self.register_load_state_dict_post_hook(_engine_stale_hook)

    def _apply(self, fn, recurse: bool = True):
        self._cpu_engine_stale = True  # new weights (device / dtype): rebuilt at next forward
        out = super()._apply(fn, recurse)  # the BoundOp modules bind again on a new device
        sync_backends(self)
        return out

    # -- frozen
    def train(self, mode: bool = True) -> FusedEfficientNet:
        return frozen_train(self, mode)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights, activations and logits."""
        return self.classifier.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.classifier.weight.device

    @property
    def num_kernels(self) -> int:
        """Kernels per forward: stem conv + bias_act, each block's fused ops, head, classifier
        (the input cast/layout change, if any, not counted)."""
        return 2 + sum(b.num_kernels for b in self.fused_blocks()) + 1 + 1

    def fused_blocks(self) -> list[FusedMBConv]:
        return [m for m in self.blocks.modules() if isinstance(m, FusedMBConv)]

    def extra_repr(self) -> str:
        be = ", ".join(f"{k}={v!r}" + (f" [{self.substitutions[k]}]"
                                        if k in self.substitutions else "")
                       for k, v in self.backends.items())
        return (f"name={self.name!r}, dtype={self.dtype}, device={self.device}, "
                f"requested_backend={self.requested_backend!r}, cuda_graph={self.cuda_graph}, "
                f"num_kernels={self.num_kernels}, backends: {be}")

    # -- forward
    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        cin = self.stem.weight.shape[1]
        if x.dim() != 4 or x.shape[1] != cin:
            raise ValueError(f"input must be (N, {cin}, H, W), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"input must be a floating-point tensor, got {x.dtype}")
        if x.device != self.device:
            raise RuntimeError(f"input is on {x.device} but the model is on {self.device}")

    def forward_eager(self, x: Tensor) -> Tensor:
        """The forward without CUDA graphs."""
        self._check_input(x)
        with torch.no_grad():
            # The one layout change (and the cast to the model's dtype), a no-op when x
            # already is channels_last in that dtype.
            x = x.to(self.dtype, memory_format=torch.channels_last)
            x = run_sequential(self.blocks, call(self.stem, x))
            pool = call(self.head, x, pool_only=True)  # float32 (N, C_head)
            return call(self.classifier, pool.to(self.dtype))

    def forward(self, x: Tensor) -> Tensor:
        if self.cuda_graph and not torch.compiler.is_compiling():
            return self._forward_graphed(x)
        engine = self._engine_for(x)
        if engine is not None:
            return engine.forward(x)
        return self.forward_eager(x)

    # -- the C++ CPU engine (effnet_kernels.cpu_engine)
    @property
    def cpu_engine(self) -> str:
        """Which CPU forward runs: the engine's description, or why the per-op path runs."""
        if self._cpu_engine_stale or cpu_engine.active_isa() != self._cpu_engine_isa:
            self.refresh_cpu_engine()
        if not self.use_cpu_engine:
            return "off (use_cpu_engine=False): per-op path"
        if self._cpu_engine is None:
            return f"off ({self._cpu_engine_reason}): per-op path"
        return self._cpu_engine.describe()

    def refresh_cpu_engine(self) -> None:
        """Rebuild the engine from the current buffers (after changing a module attribute the
        buffer check cannot see, e.g. an ``act``)."""
        self._cpu_engine, self._cpu_engine_reason = cpu_engine.build(self)
        self._cpu_engine_stale = False
        self._cpu_engine_key = cpu_engine.Snapshot(self)
        self._cpu_engine_isa = cpu_engine.active_isa()

    def _engine_for(self, x):
        """The engine when this forward can run on it: plain CPU float input outside tracing
        and dispatch modes, no hooks, buffers and the CPU ISA level unchanged since it was
        built (else it is rebuilt); otherwise None (the per-op path, which also raises the
        input errors)."""
        if not (self.use_cpu_engine and cpu_engine.uses_engine(x)):
            return None
        if self._cpu_engine_stale or self._cpu_engine_key.changed() \
                or cpu_engine.active_isa() != self._cpu_engine_isa:  # (set_cpu_isa since)
            self.refresh_cpu_engine()
        eng = self._cpu_engine
        if eng is None or x.shape[1] != self.stem.weight.shape[1] \
                or self._cpu_engine_key.hooked():
            return None
        return eng

    # -- CUDA graphs
    def _capture(self, x: Tensor) -> _Graph:
        dev = self.device
        with torch.cuda.device(dev), torch.inference_mode(False), torch.no_grad():
            # Ordinary (non-inference) tensors, so later calls in or out of inference_mode can
            # copy into the static input.
            static_in = torch.empty(x.shape, dtype=self.dtype, device=dev,
                                    memory_format=torch.channels_last)
            static_in.copy_(x)
            # Warm up on a side stream (lazy init, cuBLAS/cuDNN handles, Triton autotuning and
            # compilation happen here, not inside the capture).
            side = torch.cuda.Stream(dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):
                for _ in range(self.graph_warmup_iters):
                    self.forward_eager(static_in)
            torch.cuda.current_stream(dev).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):  # a private memory pool per graph
                static_out = self.forward_eager(static_in)
        return _Graph(graph, static_in, static_out)

    def _forward_graphed(self, x: Tensor) -> Tensor:
        self._check_input(x)
        key = (tuple(x.shape), self.dtype, self.device)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(x)
            self._graphs[key] = entry
            while len(self._graphs) > max(1, self.graph_cache_size):
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        with torch.cuda.device(self.device), torch.no_grad():
            entry.static_in.copy_(x)  # cast + layout change, on the current stream
            entry.graph.replay()  # on the current stream
            # a copy the next replay cannot overwrite (a tensor, or a list of feature maps)
            out = entry.static_out
            return [t.clone() for t in out] if isinstance(out, list) else out.clone()

    def reset_cuda_graphs(self) -> None:
        """Drop every captured graph (and its memory pool)."""
        self._graphs.clear()

    def __getstate__(self):
        # copy.deepcopy / pickle: captured graphs are not copyable; a copy re-captures.
        state = self.__dict__.copy()
        state["_graphs"] = OrderedDict()
        state["_cpu_engine"], state["_cpu_engine_stale"] = None, True  # rebuilt on first use
        state["_cpu_engine_key"] = None
        return state

    def __setstate__(self, state):
        # models pickled before the CPU engine existed: its attributes, off until first use
        state.setdefault("use_cpu_engine", True)
        state.setdefault("_cpu_engine_reason", None)
        state["_cpu_engine"], state["_cpu_engine_stale"], state["_cpu_engine_key"] = None, True, None
        state["_cpu_engine_isa"] = None
        super().__setstate__(state)


def _engine_stale_hook(module: FusedEfficientNet, incompatible_keys) -> None:
    """load_state_dict post hook: the engine's packed weights are out of date."""
    module._cpu_engine_stale = True


def sync_backends(model: nn.Module) -> None:
    """After a device move: ``model.backends`` names what each op's modules are bound to now."""
    for m in model.modules():
        if isinstance(m, BoundOp) and m.op in model.backends:
            model.backends[m.op] = m.backend


def frozen_train(model: nn.Module, mode: bool):
    """``train()`` of the frozen fused models: eval is a no-op, training mode is refused."""
    if mode:
        raise RuntimeError(
            f"{type(model).__name__} is a frozen inference model (BN folded into the convs, "
            "weights stored as buffers); it cannot be put in training mode. To train, use "
            "ek.optimize_for_training(source_model) (fused, memory-efficient, over the source's "
            "own parameters) or the source model itself, then call ek.optimize() on it again.")
    return nn.Module.train(model, False)


# ----------------------------------------------------------------------------- building
def _own(t: Tensor, dtype: torch.dtype) -> Tensor:
    """A detached copy of ``t`` in ``dtype`` that shares no storage with the source."""
    return t.detach().to(dtype=dtype, copy=True)


def _fold(cba: ConvBNAct, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """BN folded into ``cba.conv`` in float64 (eval-mode running statistics), cast to dtype."""
    w, b = fold_bn(cba.conv.weight.detach().double(), cba.bn, cba.conv.bias)
    return w.to(dtype), b.to(dtype)


def _fused_block(blk: MBConv, dtype: torch.dtype, be: dict[str, str]) -> FusedMBConv:
    expand = None
    if blk.expand is not None:
        w, b = _fold(blk.expand, dtype)
        expand = PointwiseConvBNAct(w, b, blk.expand.act_name, backend=be["pointwise_conv"])
    w, b = _fold(blk.dw, dtype)
    dw = FusedDWConvBNAct(w, b, blk.dw.stride, blk.dw.padding_mode, blk.dw.act_name,
                          backend=be["dwconv_bias_act"])
    se = None
    if blk.se is not None:
        if act_name(blk.se.act) != "silu":
            raise ValueError(f"SE activation must be SiLU, got {type(blk.se.act).__name__}")
        fc1, fc2 = blk.se.fc1, blk.se.fc2
        se = SqueezeExcite(_own(fc1.weight, dtype), _own(fc1.bias, dtype),
                           _own(fc2.weight, dtype), _own(fc2.bias, dtype),
                           backend=be["se_gate"])
    w, b = _fold(blk.project, dtype)
    project = PointwiseConvBNAct(w, b, blk.project.act_name, backend=be["pointwise_conv"])
    return FusedMBConv(expand, dw, se, project, blk.use_residual)


def _to_ek(model: nn.Module) -> EfficientNet:
    """The effnet_kernels model for ``model`` (itself, or a conversion that copies weights)."""
    from . import convert
    from .models.features import EfficientNetFeatures

    if isinstance(model, FusedEfficientNet):
        raise TypeError("model is already a FusedEfficientNet (the output of ek.optimize); "
                        "pass the source model instead")
    if isinstance(model, (EfficientNet, EfficientNetFeatures)):
        return model
    tv = sys.modules.get("torchvision.models.efficientnet")  # loaded if model is one of its
    if tv is not None and isinstance(model, tv.EfficientNet):
        return convert.from_torchvision(model)
    tm = sys.modules.get("timm.models.efficientnet")
    if tm is not None and isinstance(model, tm.EfficientNet):
        return convert.from_timm(model)
    if isinstance(model, nn.Module) and hasattr(model, "_blocks") and hasattr(model, "_conv_stem"):
        return convert.from_efficientnet_pytorch(model)  # lukemelas (and its Lite fork)
    raise TypeError(
        f"ek.optimize does not know {type(model).__module__}.{type(model).__qualname__}; "
        "expected an effnet_kernels EfficientNet, torchvision.models.EfficientNet, "
        "timm.models.EfficientNet or an efficientnet_pytorch EfficientNet")


def _setup(src: nn.Module, backend: str, dtype: torch.dtype | None, cuda_graph: bool,
           stacklevel: int = 3) -> tuple[torch.dtype, dict[str, str], dict[str, str]]:
    """The checked build settings for ``src`` (an effnet_kernels model or backbone): (dtype,
    per-op backends, substitutions); warns when "auto" leaves an op on "torch" on a GPU."""
    ref = src.stem.conv.weight
    device = ref.device
    if device.type == "meta":
        raise ValueError("model is on the meta device: it has no weights to fold")
    if dtype is None:
        dtype = ref.dtype
    if not isinstance(dtype, torch.dtype) or dtype not in ops.FLOAT_DTYPES:
        raise ValueError(f"dtype must be one of {ops.FLOAT_DTYPES} (or None for the model's "
                         f"own), got {dtype!r}")
    if cuda_graph and device.type != "cuda":
        raise RuntimeError(f"cuda_graph=True needs a model on a CUDA device; it is on {device}")
    be, subs = registry.resolve_all(FUSED_OPS, backend, device)
    if backend == "auto" and device.type == "cuda":
        slow = [op for op, b in be.items() if b == "torch"]
        if slow:
            warnings.warn(f"ek.optimize(backend='auto'): {', '.join(slow)} run on the 'torch' "
                          f"reference on {device} (available: {ops.available_backends(device)}); "
                          "build the CUDA extension or install Triton for fused kernels",
                          stacklevel=stacklevel)
    return dtype, be, subs


def _rebind(modules, backend: str) -> None:
    """Make a later device move bind every op of ``modules`` (and below) for ``backend``."""
    for top in modules:
        for m in top.modules():
            if isinstance(m, BoundOp):
                m.rebind_as(backend, substitute=True)


def fused_trunk(src: nn.Module, dtype: torch.dtype, be: dict[str, str], backend: str,
                num_stages: int | None = None) -> tuple[FusedStem, list[nn.Sequential]]:
    """The fused stem and the first ``num_stages`` (default all) fused stages of ``src``."""
    w, b = _fold(src.stem, dtype)
    stem = FusedStem(w, b, src.stem.stride, src.stem.padding_mode, src.stem.act_name,
                     be["bias_act"])
    stages = [nn.Sequential(*[_fused_block(blk, dtype, be) for blk in stage])
              for stage in list(src.blocks)[:num_stages]]
    _rebind([stem, *stages], backend)
    return stem, stages


def fused_head(src: nn.Module, dtype: torch.dtype, be: dict[str, str],
               backend: str) -> PointwiseConvBNAct:
    """The fused head of ``src`` (conv_head + BN + act, called with ``pool_only=True``)."""
    w, b = _fold(src.head, dtype)
    head = PointwiseConvBNAct(w, b, src.head.act_name, backend=be["pointwise_conv"])
    _rebind([head], backend)
    return head


def optimize(model: nn.Module, backend: str = "auto", dtype: torch.dtype | None = None,
             cuda_graph: bool = False, *, features_only: bool = False, out_indices=None,
             num_classes: int | None = None) -> nn.Module:
    """Build the frozen fused inference model from ``model`` (see this module's docstring).

    Args:
        model: an effnet_kernels EfficientNet, or a torchvision / timm / efficientnet_pytorch
            EfficientNet. Not modified; its train/eval mode does not matter.
        backend: "auto", "cuda", "triton", "cpu" or "torch", for the weights' device. With
            "cuda", ``pointwise_conv`` (no CUDA kernel) runs on Triton, as ``backends`` says.
        dtype: torch.float32 / float16 / bfloat16 for weights, activations and logits;
            default the model's own dtype.
        cuda_graph: capture and replay the forward with CUDA graphs (CUDA models only).
        features_only: return the multi-scale backbone (``features.FusedFeatures``): the list
            of feature maps at ``out_indices`` (default all five), timm's convention.
        num_classes: ``0`` returns the pooled embedding (``features.FusedEmbedding``); None
            keeps the source's classifier (a source without one gives the embedding model).
            ``model`` may also be an optimized (or INT8) model here: its modules are shared.

    Raises:
        TypeError: unknown model type. ValueError: unknown backend or unsupported dtype.
        RuntimeError: a backend (or, for "cuda", Triton for pointwise_conv) that is not
            available here; ``cuda_graph=True`` on a non-CUDA model.
    """
    from . import features

    if features_only or out_indices is not None or num_classes is not None \
            or features.is_backbone(model):
        return features.optimize_backbone(model, backend, dtype, cuda_graph, features_only,
                                          out_indices, num_classes)
    src = _to_ek(model)
    dtype, be, subs = _setup(src, backend, dtype, cuda_graph)
    stem, stages = fused_trunk(src, dtype, be, backend)
    head = fused_head(src, dtype, be, backend)
    classifier = FrozenLinear(_own(src.classifier.weight, dtype),
                              _own(src.classifier.bias, dtype))
    return FusedEfficientNet(stem, nn.Sequential(*stages), head, classifier, backends=be,
                             substitutions=subs, cuda_graph=cuda_graph,
                             name=getattr(getattr(src, "config", None), "name", "efficientnet"),
                             requested_backend=backend)
