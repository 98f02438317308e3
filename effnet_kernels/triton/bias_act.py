"""Triton implementation of ``bias_act``: y = apply_act(x + bias[c]) on channels_last x.

Layout: x is NHWC in memory, viewed as a (R, C) row-major matrix with R = N*H*W. Each program
owns a BLOCK_R x BLOCK_C tile (rows x channels): it loads the BLOCK_C bias values once and
reuses them for all BLOCK_R rows. Offsets are 64-bit. Math in float32, stored in x's dtype.
Bytes moved: 2 * R * C * itemsize (+ C bias). Tested on the CPU through TRITON_INTERPRET=1; on a
GPU only through benchmarks/gpu_check.sh.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import ACT_CODES, ConfigSet, apply_act, on_input_device

CONFIGS = ConfigSet(
    gpu=tuple(triton.Config({"BLOCK_R": r, "BLOCK_C": c}, num_warps=w)
              for r, c, w in [(32, 64, 4), (16, 128, 4), (64, 64, 8), (8, 256, 4), (128, 32, 8)]),
    fixed=triton.Config({"BLOCK_R": 32, "BLOCK_C": 64}, num_warps=4),
    interp=triton.Config({"BLOCK_R": 16, "BLOCK_C": 32}),
)


@triton.autotune(configs=CONFIGS.configs(), key=["C"])
@triton.jit
def _bias_act_kernel(x_ptr, b_ptr, y_ptr, R, C, ACT: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    b = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    offs = rows[:, None] * C + cols[None, :]
    mask = (rows[:, None] < R) & cmask[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = apply_act(x + b[None, :], ACT)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@on_input_device
def bias_act(x: torch.Tensor, bias: torch.Tensor, act: str) -> torch.Tensor:
    """Launcher: arguments already validated by effnet_kernels.ops."""
    y = torch.empty_like(x, memory_format=torch.channels_last)
    C = x.shape[1]
    R = x.numel() // C if C else 0
    if R == 0:
        return y

    def grid(meta):
        return (triton.cdiv(R, meta["BLOCK_R"]), triton.cdiv(C, meta["BLOCK_C"]))

    _bias_act_kernel[grid](x, bias.contiguous(), y, R, C, ACT=ACT_CODES[act])
    return y
