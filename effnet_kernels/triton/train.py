"""Triton kernels of the training ops' BN-act prologue (effnet_kernels/train_ops.py), the same
contracts as the C++ CPU kernels ``effnet::bn_act_apply`` and ``effnet::bn_act_backward``:

* ``bn_act_apply(x, mean, scale, beta, act, gate)``: y = act(x·scale + shift) · gate[n, c]
  (shift = beta − mean·scale), float32 out.
* ``bn_act_backward(x, dy, mean, scale, beta, act, gate)``: (dx, dscale, dbeta, dgate) of the
  same, from x and dy in one pass: dv = dy·gate·act'(v), dx = dv·scale, dbeta = Σ dv,
  dscale = Σ dv·(x − mean), dgate[n, c] = Σ_hw dy·act(v).

Layout: x and dy channels_last, viewed per image as (H·W, C) row-major. A program owns a
BLOCK_R × BLOCK_C tile of one image (rows never cross images, so the gate and its gradient are
per program); the backward writes per-tile column sums to a float32 workspace
(N · row tiles, 3, C), summed afterwards in float64 in a fixed order (deterministic). Offsets
are 64-bit. Math in float32; x / dy may be float32, float16 or bfloat16 (dx in x's dtype).
Tested on the CPU through TRITON_INTERPRET=1 (tests/test_train_ops.py); not yet run on a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import ACT_CODES, ConfigSet, apply_act, check_grid, interpreting, on_input_device

# One config, not autotuned yet (no GPU has run these kernels): ``interp`` under the interpreter,
# ``fixed`` otherwise; ``gpu`` lists the candidates for when they are tuned on a GPU.
CONFIGS = ConfigSet(
    gpu=tuple(triton.Config({"BLOCK_R": r, "BLOCK_C": c}, num_warps=w)
              for r, c, w in [(32, 64, 4), (64, 64, 8), (16, 128, 4), (128, 32, 8)]),
    fixed=triton.Config({"BLOCK_R": 32, "BLOCK_C": 64}, num_warps=4),
    interp=triton.Config({"BLOCK_R": 16, "BLOCK_C": 32}),
)


@triton.jit
def _tile(x_ptr, mean_ptr, scale_ptr, shift_ptr, HW, C, n_rt, BLOCK_R: tl.constexpr,
          BLOCK_C: tl.constexpr):
    """The tile of this program: (image n, row tile, offsets, masks, x, mean, scale, v)."""
    pid = tl.program_id(0)
    n = pid // n_rt
    rows = (pid % n_rt) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    mask = (rows < HW)[:, None] & cmask[None, :]
    offs = (n.to(tl.int64) * HW + rows.to(tl.int64))[:, None] * C + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    mu = tl.load(mean_ptr + cols, mask=cmask, other=0.0)
    sc = tl.load(scale_ptr + cols, mask=cmask, other=0.0)
    sh = tl.load(shift_ptr + cols, mask=cmask, other=0.0)
    return n, pid, cols, cmask, mask, offs, x, mu, sc, x * sc[None, :] + sh[None, :]


@triton.jit
def _bn_act_apply_kernel(x_ptr, mean_ptr, scale_ptr, shift_ptr, gate_ptr, y_ptr, HW, C, n_rt,
                         ACT: tl.constexpr, HAS_GATE: tl.constexpr, BLOCK_R: tl.constexpr,
                         BLOCK_C: tl.constexpr):
    n, pid, cols, cmask, mask, offs, x, mu, sc, v = _tile(
        x_ptr, mean_ptr, scale_ptr, shift_ptr, HW, C, n_rt, BLOCK_R, BLOCK_C)
    a = apply_act(v, ACT)
    if HAS_GATE:
        a = a * tl.load(gate_ptr + n * C + cols, mask=cmask, other=0.0)[None, :]
    tl.store(y_ptr + offs, a, mask=mask)


@triton.jit
def _bn_act_backward_kernel(x_ptr, dy_ptr, mean_ptr, scale_ptr, shift_ptr, gate_ptr, dx_ptr,
                            part_ptr, HW, C, n_rt, ACT: tl.constexpr, HAS_GATE: tl.constexpr,
                            BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    n, pid, cols, cmask, mask, offs, x, mu, sc, v = _tile(
        x_ptr, mean_ptr, scale_ptr, shift_ptr, HW, C, n_rt, BLOCK_R, BLOCK_C)
    d = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if ACT == 3:
        s = tl.sigmoid(v)
        a = v * s
        g = s * (1.0 + v * (1.0 - s))
    elif ACT == 2:
        a = tl.minimum(tl.maximum(v, 0.0), 6.0)
        g = tl.where((v > 0.0) & (v < 6.0), 1.0, 0.0)
    elif ACT == 1:
        a = tl.maximum(v, 0.0)
        g = tl.where(v > 0.0, 1.0, 0.0)
    else:
        a = v
        g = tl.full(v.shape, 1.0, tl.float32)
    base = part_ptr + pid.to(tl.int64) * 3 * C + cols
    if HAS_GATE:
        tl.store(base + 2 * C, tl.sum(d * a, axis=0), mask=cmask)  # d is 0 off the tile
        d = d * tl.load(gate_ptr + n * C + cols, mask=cmask, other=0.0)[None, :]
    dv = tl.where(mask, d * g, 0.0)
    tl.store(dx_ptr + offs, (dv * sc[None, :]).to(dx_ptr.dtype.element_ty), mask=mask)
    tl.store(base, tl.sum(dv * (x - mu[None, :]), axis=0), mask=cmask)
    tl.store(base + C, tl.sum(dv, axis=0), mask=cmask)


def _prep(x, mean, scale, beta):
    s = scale.float().contiguous()
    shift = (beta.float() - mean.float() * s).contiguous()
    return s, shift, mean.float().contiguous()


def _launch(kernel, x, op: str, *args, **constexprs):
    """Launch over (N · row tiles per image, channel tiles) with the one config (see
    CONFIGS); returns the row tiles per image."""
    cfg = CONFIGS.interp if interpreting() else CONFIGS.fixed
    N, C, H, W = x.shape
    HW = H * W
    n_rt = triton.cdiv(HW, cfg.kwargs["BLOCK_R"])
    grid = (check_grid(N * n_rt, op), triton.cdiv(C, cfg.kwargs["BLOCK_C"]))
    opts = {} if interpreting() else {"num_warps": cfg.num_warps}
    kernel[grid](*args, HW, C, n_rt, **constexprs, **cfg.kwargs, **opts)
    return n_rt


@on_input_device
def bn_act_apply(x: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor, beta: torch.Tensor,
                 act: str, gate: torch.Tensor | None) -> torch.Tensor:
    """Launcher: channels_last x (validated by train_ops); float32 channels_last y."""
    s, shift, m = _prep(x, mean, scale, beta)
    y = torch.empty(x.shape, dtype=torch.float32, device=x.device,
                    memory_format=torch.channels_last)
    if x.numel() == 0:
        return y
    g = gate.float().contiguous() if gate is not None else s  # (unused without a gate)
    _launch(_bn_act_apply_kernel, x, "bn_act_apply", x, m, s, shift, g, y,
            ACT=ACT_CODES[act], HAS_GATE=gate is not None)
    return y


@on_input_device
def bn_act_backward(x: torch.Tensor, dy: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor,
                    beta: torch.Tensor, act: str, gate: torch.Tensor | None):
    """Launcher: (dx in x's dtype, dscale, dbeta (C,) and dgate (N, C) float32; dgate (0, 0)
    without a gate), as effnet::bn_act_backward."""
    s, shift, m = _prep(x, mean, scale, beta)
    N, C = x.shape[:2]
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    f32 = {"dtype": torch.float32, "device": x.device}
    if x.numel() == 0:
        return (dx, torch.zeros(C, **f32), torch.zeros(C, **f32),
                torch.zeros((N, C) if gate is not None else (0, 0), **f32))
    cfg = CONFIGS.interp if interpreting() else CONFIGS.fixed
    n_rt = triton.cdiv(x.shape[2] * x.shape[3], cfg.kwargs["BLOCK_R"])
    part = torch.zeros((N * n_rt, 3, C), **f32)
    g = gate.float().contiguous() if gate is not None else s
    _launch(_bn_act_backward_kernel, x, "bn_act_backward", x, dy, m, s, shift, g, dx, part,
            ACT=ACT_CODES[act], HAS_GATE=gate is not None)
    part = part.double().view(N, n_rt, 3, C)
    sums = part.sum(dim=(0, 1))
    dgate = part[:, :, 2].sum(1).float() if gate is not None else torch.zeros((0, 0), **f32)
    return dx, sums[0].float(), sums[1].float(), dgate
