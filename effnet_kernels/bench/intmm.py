"""The ``int8_intmm_*`` baseline: PyTorch's best INT8 path without this library's kernels.

The BN-folded eager model (channels_last) with every 1×1 conv (expand, project, head) as
``torch._int_mm`` (cuBLASLt int8 GEMM, int32 out; on the CPU torch's own int8 GEMM) on the
activations viewed as an (N·H·W, C) matrix, dynamically quantised per tensor (symmetric absmax,
int8) with per-output-channel symmetric int8 weights, then dequantised + bias in float32
(``addcmul``) and the activation in the float dtype; the stem, depthwise convs, SE and classifier
stay float (cuDNN FP16 on a GPU, fp32 on the CPU). ``torch._int_mm`` on CUDA needs M > 16 and
K, N multiples of 8 (every EfficientNet width is); a layer it cannot take falls back to
``F.conv2d`` in the float dtype, counted by :func:`intmm_paths`.

Why ``_int_mm`` and not an int8 cuDNN graph: the cuDNN frontend (nvidia-cudnn-frontend) is not
installed, and cuDNN's legacy int8 convolutions want NHWC int8 with C a multiple of 4 and have
little depthwise support. On the CPU (torch 2.14) ``torch._int_mm`` is about 10× slower than the
fp32 GEMM of the same shape: the CPU row measures torch's int8 GEMM, not what int8 can do there.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..models.efficientnet import ConvBNAct
from ..nn import fold_bn

__all__ = ["INT8_BASELINE_WHY", "IntMMConv1x1", "fold_model_bn", "int8_intmm_model",
           "intmm_note", "intmm_paths", "int_mm_works", "set_inplace_act"]

INT8_BASELINE_WHY = (
    "each 1x1 conv (expand, project, head) as torch._int_mm (cuBLASLt int8 GEMM on CUDA, "
    "torch's int8 GEMM on the CPU) on per-tensor dynamically quantised activations and "
    "per-channel int8 weights, dequantised in torch ops; stem, depthwise, SE and classifier "
    "in the float dtype (cuDNN FP16 on a GPU). Not an int8 cuDNN graph: nvidia-cudnn-frontend "
    "is not installed and cuDNN's legacy int8 convolutions have little depthwise support, so "
    "an int8 GEMM per 1x1 layer is PyTorch's best int8 path without custom kernels")

_INT_MM_OK: dict[str, bool] = {}  # device type -> whether torch._int_mm runs there


def int_mm_works(device) -> bool:
    """Whether ``torch._int_mm`` runs on this device (tried once per device type)."""
    device = torch.device(device)
    if device.type not in _INT_MM_OK:
        try:
            a = torch.ones(32, 32, dtype=torch.int8, device=device)
            ok = bool((torch._int_mm(a, a.t()) == 32).all())
        except (RuntimeError, AttributeError, NotImplementedError):
            ok = False
        _INT_MM_OK[device.type] = ok
    return _INT_MM_OK[device.type]


def set_inplace_act(model: nn.Module) -> nn.Module:
    """Activations in place, as torchvision builds them (less memory traffic in eager)."""
    for m in model.modules():
        if isinstance(m, (nn.SiLU, nn.ReLU, nn.ReLU6)):
            m.inplace = True
    return model


def fold_model_bn(model: nn.Module) -> nn.Module:
    """A copy of an ek EfficientNet, every ConvBNAct's BN folded into its conv (BN → Identity)."""
    m = copy.deepcopy(model).eval()
    for mod in m.modules():
        if isinstance(mod, ConvBNAct) and isinstance(mod.bn, nn.BatchNorm2d):
            c = mod.conv
            w, b = fold_bn(c.weight, mod.bn, c.bias)
            conv = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding,
                             groups=c.groups, bias=True)
            with torch.no_grad():
                conv.weight.copy_(w)
                conv.bias.copy_(b)
            mod.conv, mod.bn = conv, nn.Identity()
    return m


class IntMMConv1x1(nn.Module):
    """A BN-folded 1×1 conv as ``torch._int_mm``: the channels_last input viewed as an
    (N·H·W, Cin) matrix, quantised per tensor (symmetric absmax → int8 in [−127, 127], scale
    computed on the device, no host sync), times the per-output-channel symmetric int8 weight
    (Cout, Cin) transposed (column-major, the layout cuBLASLt's int8 GEMM wants), int32
    accumulators dequantised + bias in float32 (one ``addcmul``), then cast to the float dtype.
    Shapes ``torch._int_mm`` cannot take (CUDA: M ≤ 16, K or N not a multiple of 8; or no
    ``_int_mm`` on the device) run ``F.conv2d`` in the float dtype; ``last_path`` says which ran
    last ("int_mm" / "conv2d")."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        w = conv.weight.detach()
        cout, cin = w.shape[0], w.shape[1]
        w32 = w.float().reshape(cout, cin)
        amax = w32.abs().amax(dim=1)
        s_w = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
        wq = torch.round(w32 / s_w[:, None]).clamp_(-127, 127).to(torch.int8)
        b = conv.bias.detach() if conv.bias is not None else torch.zeros(cout, device=w.device)
        self.register_buffer("weight_q", wq.contiguous())  # (Cout, Cin)
        self.register_buffer("w_scale", s_w)
        self.register_buffer("bias32", b.float().clone())
        self.register_buffer("weight", w.clone())  # the float fallback
        self.register_buffer("bias", b.to(w.dtype).clone())
        self.in_ch, self.out_ch = cin, cout
        self.last_path = None

    def _int_mm_ok(self, m: int, device) -> bool:
        if not int_mm_works(device):
            return False
        if device.type == "cuda":
            return m > 16 and self.in_ch % 8 == 0 and self.out_ch % 8 == 0
        return m > 0

    def forward(self, x):
        n, c, h, w = x.shape
        m = n * h * w
        if not self._int_mm_ok(m, x.device):
            self.last_path = "conv2d"
            return F.conv2d(x, self.weight, self.bias)
        self.last_path = "int_mm"
        a = x.permute(0, 2, 3, 1).reshape(m, c)  # a view when x is channels_last
        if a.is_cuda:  # one reduction kernel
            amax = torch.linalg.vector_norm(a, float("inf")).float()
        else:  # CPU: aminmax is ~20x faster than the inf-norm in torch 2.14
            lo, hi = torch.aminmax(a)
            amax = torch.maximum(hi, -lo).float()
        # 127 / amax, kept finite in the activation dtype (fp16: ≤ 65504; amax = 0 → max)
        inv = (127.0 / amax).clamp_(max=torch.finfo(a.dtype).max).to(a.dtype)
        q = (a * inv).round_().clamp_(-127, 127).to(torch.int8)
        acc = torch._int_mm(q, self.weight_q.t())  # (M, Cout) int32
        y = torch.addcmul(self.bias32, acc, self.w_scale / inv.float())  # float32
        if y.dtype != x.dtype:
            y = y.to(x.dtype)
        return y.view(n, h, w, self.out_ch).permute(0, 3, 1, 2)  # channels_last

    def extra_repr(self) -> str:
        return f"{self.in_ch} -> {self.out_ch}, last_path={self.last_path!r}"


def int8_intmm_model(base: nn.Module, dtype=None, device="cpu") -> nn.Module:
    """The ``int8_intmm_*`` baseline from an ek EfficientNet (see the module docstring): BN
    folded, activations in place, ``dtype`` (default float16 on a GPU, float32 on the CPU),
    channels_last, on ``device``; every 1×1 ConvBNAct conv (expand, project, head) replaced by an
    :class:`IntMMConv1x1`. Stem, depthwise convs, SE and classifier stay float."""
    device = torch.device(device)
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    m = set_inplace_act(fold_model_bn(base)).to(device=device, dtype=dtype,
                                                memory_format=torch.channels_last)
    for mod in m.modules():
        if isinstance(mod, ConvBNAct):
            c = mod.conv
            if c.kernel_size == (1, 1) and c.groups == 1 and c.stride == (1, 1):
                mod.conv = IntMMConv1x1(c)
    return m.eval()


def intmm_paths(model: nn.Module) -> dict:
    """{"int_mm": n, "conv2d": n} over the 1×1 layers of an ``int8_intmm_model`` (last forward)."""
    out = {"int_mm": 0, "conv2d": 0}
    for mod in model.modules():
        if getattr(mod, "last_path", None) in out:
            out[mod.last_path] += 1
    return out


def intmm_note(model: nn.Module) -> str:
    """The result note of an ``int8_intmm_model`` after a forward: which path each 1×1 took."""
    p = intmm_paths(model)
    return (f"{p['int_mm']} 1x1 convs via torch._int_mm, {p['conv2d']} fell back to F.conv2d "
            "(shape torch._int_mm cannot take, or no _int_mm on this device)")
