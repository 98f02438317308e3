"""Argument checks shared by the op wrappers (``ops``) and the modules bound to them (``nn``,
``quant``): one message per mistake, whatever the backend (the C++ kernels check again for C++
callers). Each raises ``TypeError`` (wrong type / dtype), ``ValueError`` (wrong shape or value)
or ``RuntimeError`` (wrong device)."""

from __future__ import annotations

import math
import struct

import torch

from . import reference
from .registry import dwconv_out_size

ACTIVATIONS = reference.ACTIVATIONS
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INT8 = (torch.int8,)


def _shape(t) -> object:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__


def tensor(t, op: str, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def nhwc(x, op: str, name: str = "x", dtypes=FLOAT_DTYPES) -> None:
    """A 4-D channels_last tensor of one of ``dtypes``."""
    tensor(x, op, name)
    if x.dim() != 4:
        raise ValueError(f"{op}: {name} must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if x.dtype not in dtypes:
        names = [str(d).removeprefix("torch.") for d in dtypes]
        want = " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
        raise TypeError(f"{op}: {name} must be {want}, got {x.dtype}")
    if not x.is_contiguous(memory_format=torch.channels_last):
        raise ValueError(f"{op}: {name} must be channels_last contiguous "
                         "(use x.contiguous(memory_format=torch.channels_last))")


def same_device(t: torch.Tensor, device: torch.device, op: str, name: str,
                other: str = "x") -> None:
    if t.device != device:
        raise RuntimeError(f"{op}: {name} is on {t.device} but {other} is on {device}")


def vector(v, n: int, op: str, name: str, dtype: torch.dtype, device: torch.device) -> None:
    """A 1-D tensor of ``n`` elements, ``dtype``, on ``device``."""
    if not isinstance(v, torch.Tensor) or v.dim() != 1 or v.shape[0] != n:
        raise ValueError(f"{op}: {name} must have shape ({n},), got {_shape(v)}")
    if v.dtype != dtype:
        raise TypeError(f"{op}: {name} dtype {v.dtype} does not match {dtype}")
    same_device(v, device, op, name, "the input")


def matrix(t, rows: int | None, cols: int | None, op: str, name: str,
           dtypes=FLOAT_DTYPES) -> torch.Tensor:
    """A (rows, cols) matrix (a 1×1 conv weight with trailing 1, 1 accepted), as 2-D."""
    tensor(t, op, name)
    m = t.reshape(t.shape[0], -1) if t.dim() == 4 and t.shape[2:] == (1, 1) else t
    if m.dim() != 2 or (rows is not None and m.shape[0] != rows) or \
            (cols is not None and m.shape[1] != cols):
        want = f"({rows if rows is not None else 'R'}, {cols if cols is not None else 'C'})"
        raise ValueError(f"{op}: {name} must have shape {want} (or with trailing 1, 1), "
                         f"got {tuple(t.shape)}")
    if m.dtype not in dtypes:
        raise TypeError(f"{op}: {name} must be one of {dtypes}, got {m.dtype}")
    return m


def act(a, op: str) -> str:
    if a not in ACTIVATIONS:
        raise ValueError(f"{op}: unknown activation {a!r}; expected one of {ACTIVATIONS}")
    return a


def dw_weight(weight, C: int, op: str, dtype: torch.dtype, device: torch.device) -> int:
    """A depthwise weight (C, 1, k, k) with odd k; returns k."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4 or weight.shape[0] != C \
            or weight.shape[1] != 1 or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"{op}: weight must have shape ({C}, 1, k, k) for a depthwise conv over "
                         f"{C} channels, got {_shape(weight)}")
    k = weight.shape[-1]
    if k % 2 == 0:
        raise ValueError(f"{op}: kernel size must be odd, got {k}")
    if weight.dtype != dtype:
        if dtype == torch.int8:
            raise TypeError(f"{op}: weight must be int8, got {weight.dtype}")
        raise TypeError(f"{op}: weight dtype {weight.dtype} does not match x dtype {dtype}")
    same_device(weight, device, op, "weight")
    return k


def stride(s, op: str) -> int:
    if s not in (1, 2) or isinstance(s, bool):
        raise ValueError(f"{op}: stride must be 1 or 2, got {s}")
    return int(s)


def dw_geometry(H: int, W: int, k: int, s: int, padding, op: str) -> tuple[int, int, int, int]:
    """The normalised (left, right, top, bottom) pads of a k×k depthwise conv with stride ``s``
    on an H×W input; each pad in [0, k−1] and the output at least 1×1."""
    stride(s, op)
    pads = reference.normalize_padding(padding, k)
    if any(p < 0 or p >= k for p in pads):
        raise ValueError(f"{op}: each padding must be in [0, k-1] = [0, {k - 1}], got {pads}")
    Ho, Wo = dwconv_out_size(H, W, k, s, pads)
    if Ho < 1 or Wo < 1:
        raise ValueError(f"{op}: input {(H, W)} with padding {pads} is smaller than "
                         f"the {k}x{k} kernel")
    return pads


def gate(g, N: int, Cin: int, op: str, device: torch.device) -> None:
    """The SE gate of the pointwise ops: float32 (N, Cin) on x's device."""
    if not isinstance(g, torch.Tensor) or tuple(g.shape) != (N, Cin):
        raise ValueError(f"{op}: gate must have shape ({N}, {Cin}), got {_shape(g)}")
    if g.dtype != torch.float32:
        raise TypeError(f"{op}: gate must be float32, got {g.dtype}")
    same_device(g, device, op, "gate")


def residual(r, shape: tuple, op: str, dtype: torch.dtype, device: torch.device) -> None:
    """A channels_last residual of ``shape`` and ``dtype`` on x's device."""
    if not isinstance(r, torch.Tensor) or tuple(r.shape) != tuple(shape):
        raise ValueError(f"{op}: residual must have shape {tuple(shape)}, got {_shape(r)}")
    if r.dtype != dtype:
        raise TypeError(f"{op}: residual dtype {r.dtype} does not match x dtype {dtype}")
    same_device(r, device, op, "residual")
    nhwc(r, op, "residual", (dtype,))


def pool_only_size(H: int, W: int, pool_only: bool, op: str) -> None:
    if pool_only and H * W == 0:
        raise ValueError(f"{op}: pool_only needs a non-empty spatial size, got {H}x{W}")


def zero_point(zp, op: str, name: str) -> int:
    if isinstance(zp, bool) or not isinstance(zp, int) or not -128 <= zp <= 127:
        raise ValueError(f"{op}: {name} must be an int in [-128, 127], got {zp!r}")
    return zp


def positive_f32(v, op: str, name: str) -> float:
    """A float > 0 that stays finite and > 0 as float32 (a scale or an inverse scale: the
    kernels and the reference use it as float32, so 1e39 (→ inf) and 1e-46 (→ 0) are refused)."""
    ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v > 0
    if ok:
        try:
            f32 = struct.unpack("f", struct.pack("f", v))[0]
            ok = math.isfinite(f32) and f32 > 0
        except OverflowError:  # some Pythons raise instead of rounding to inf
            ok = False
    if not ok:
        raise ValueError(f"{op}: {name} must be a float > 0 that is finite and > 0 in "
                         f"float32, got {v!r}")
    return float(v)
