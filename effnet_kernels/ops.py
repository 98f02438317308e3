"""Typed wrappers over ``torch.ops.effnet.*``, their fake kernels, and backend dispatch.

Every op takes ``backend=``:

* ``"cuda"``   the csrc CUDA kernels (needs the CUDA build of ``effnet_kernels._C``),
* ``"triton"`` the Triton kernels (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``),
* ``"cpu"``    the csrc CPU kernels,
* ``"torch"``  ``effnet_kernels.reference`` (plain PyTorch),
* ``"auto"``   cuda, else triton, else torch for CUDA tensors; cpu, else torch for CPU tensors.

An explicitly requested backend that is not available raises ``RuntimeError`` naming what is
missing; nothing falls back silently. Arguments are validated here, once, with the same messages
for every backend (the C++ kernels check again for C++ callers).
"""

from __future__ import annotations

import importlib.util
import os

import torch

from . import reference

try:
    from . import _C  # noqa: F401  (registers torch.ops.effnet.*)

    _C_ERROR: str | None = None
except ImportError as e:  # the package works without its compiled core
    _C = None
    _C_ERROR = f"{type(e).__name__}: {e}"

BACKENDS = ("auto", "cuda", "triton", "cpu", "torch")
ACTIVATIONS = reference.ACTIVATIONS
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------- availability
def extension_available() -> bool:
    """True when the compiled core ``effnet_kernels._C`` imported."""
    return _C is not None


def extension_error() -> str | None:
    """Why ``effnet_kernels._C`` did not import, or None."""
    return _C_ERROR


def cuda_kernels_built() -> bool:
    """True when ``_C`` was compiled with its CUDA sources."""
    return _C is not None and bool(_C.build_info()["has_cuda"])


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


_TRITON_FOUND = importlib.util.find_spec("triton") is not None


def triton_importable() -> bool:
    return _TRITON_FOUND


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run ops on tensors of ``device``, best first (excluding "auto")."""
    device = torch.device(device)
    out = []
    if device.type == "cuda":
        if cuda_kernels_built():
            out.append("cuda")
        if triton_importable():
            out.append("triton")
    else:
        if extension_available():
            out.append("cpu")
        if triton_importable() and triton_interpreting():
            out.append("triton")
    out.append("torch")
    return out


def _why_unavailable(backend: str, device: torch.device) -> str:
    if backend == "cuda":
        if device.type != "cuda":
            return f"the 'cuda' backend needs CUDA tensors, got a tensor on {device}"
        if _C is None:
            return f"the compiled extension effnet_kernels._C is missing ({_C_ERROR})"
        return ("effnet_kernels._C was built without CUDA (rebuild with a CUDA torch and nvcc, "
                "or EFFNET_CUDA=1)")
    if backend == "cpu":
        if device.type != "cpu":
            return f"the 'cpu' backend needs CPU tensors, got a tensor on {device}"
        return f"the compiled extension effnet_kernels._C is missing ({_C_ERROR})"
    if backend == "triton":
        if not triton_importable():
            return "triton is not installed"
        return ("the 'triton' backend needs CUDA tensors (or TRITON_INTERPRET=1 set before "
                f"triton is imported, for CPU tensors); got a tensor on {device}")
    return f"unknown backend {backend!r}"


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """The concrete backend for ``backend`` on tensors of ``device``; raises if unavailable."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    device = torch.device(device)
    avail = available_backends(device)
    if backend == "auto":
        return avail[0]
    if backend not in avail:
        raise RuntimeError(f"backend {backend!r} is not available: "
                           f"{_why_unavailable(backend, device)}")
    return backend


# ----------------------------------------------------------------------------- checks
def _check_nhwc(x: torch.Tensor, op: str, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{op}: {name} must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be float32, float16 or bfloat16, got {x.dtype}")
    if not x.is_contiguous(memory_format=torch.channels_last):
        raise ValueError(f"{op}: {name} must be channels_last contiguous "
                         "(use x.contiguous(memory_format=torch.channels_last))")


def _check_channel_vector(v: torch.Tensor, x: torch.Tensor, op: str, name: str) -> None:
    C = x.shape[1]
    if not isinstance(v, torch.Tensor) or v.dim() != 1 or v.shape[0] != C:
        shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise ValueError(f"{op}: {name} must have shape ({C},), got {shape}")
    if v.dtype != x.dtype:
        raise TypeError(f"{op}: {name} dtype {v.dtype} does not match x dtype {x.dtype}")
    if v.device != x.device:
        raise RuntimeError(f"{op}: {name} is on {v.device} but x is on {x.device}")


def _check_act(act: str, op: str) -> None:
    if act not in ACTIVATIONS:
        raise ValueError(f"{op}: unknown activation {act!r}; expected one of {ACTIVATIONS}")


# ----------------------------------------------------------------------------- fake kernels
if _C is not None:

    @torch.library.register_fake("effnet::bias_act")
    def _bias_act_fake(x, bias, act):
        return torch.empty_like(x, memory_format=torch.channels_last)


# ----------------------------------------------------------------------------- ops
def bias_act(x: torch.Tensor, bias: torch.Tensor, act: str = "silu", *,
             backend: str = "auto") -> torch.Tensor:
    """y = act(x + bias[c]) for channels_last x (N, C, H, W); act in ``ACTIVATIONS``.

    float32 / float16 / bfloat16 in, same dtype out (channels_last), float32 math.
    """
    _check_nhwc(x, "bias_act")
    _check_channel_vector(bias, x, "bias_act", "bias")
    _check_act(act, "bias_act")
    b = resolve_backend(backend, x.device)
    if b in ("cuda", "cpu"):
        return torch.ops.effnet.bias_act(x, bias, act)
    if b == "triton":
        from .triton import bias_act as tb

        return tb.bias_act(x, bias, act)
    return reference.bias_act(x, bias, act)
