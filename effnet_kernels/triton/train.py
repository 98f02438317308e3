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

The depthwise conv with its input's BN-act prologue (``effnet::dwconv_train`` and its backward;
contracts in csrc/dwconv_train/dwconv_train_cpu.cpp):

* ``dwconv_train(x, weight, mean, scale, beta, act, stride, padding)``: z = the k×k depthwise
  conv (zero padding (left, right, top, bottom), stride 1/2, no bias) of a = act(x·scale + shift)
  — of x without BN —, in x's dtype; the activated input is computed on load per tap (k² times
  per input element: cheap next to the bytes on a GPU) and never written.
* ``dwconv_train_backward(x, dz, weight, ...)``: (dx, dweight, dscale, dbeta). Two kernels:
  ``_dw_dx_kernel`` gathers da for a BLOCK_P × BLOCK_C tile of input pixels from the dz taps
  that read them (stride-2 parity checks in the masks), then dv = da·act'(v), dx = dv·scale,
  and per-program column sums of dv and dv·(x − mean); ``_dw_dw_kernel`` sums dz·a for each of
  the k² taps over a tile of output pixels, a recomputed on load. Both write float32 partials
  (programs, ·, C) summed in float64 afterwards (deterministic).

Bytes per element (forward): read x, write z (+ k² L1/L2-cached re-reads of x); backward: read x
(twice: both kernels) and dz (k²/s² cached re-reads), write dx. Same test path as above
(interpreter); **never run on a GPU**.
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
def _act_and_grad(v, ACT: tl.constexpr):
    """(act(v), act'(v)) in float32, PyTorch's conventions (0 at the ReLU / ReLU6 kinks)."""
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
    return a, g


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
    a, g = _act_and_grad(v, ACT)
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


# ---------------------------------------------------------------------------------------------
# Depthwise conv with the BN-act prologue (one config, as above)
DW_CONFIGS = ConfigSet(
    gpu=tuple(triton.Config({"BLOCK_P": p, "BLOCK_C": c}, num_warps=w)
              for p, c, w in [(32, 64, 4), (64, 32, 4), (16, 128, 4)]),
    fixed=triton.Config({"BLOCK_P": 32, "BLOCK_C": 64}, num_warps=4),
    interp=triton.Config({"BLOCK_P": 16, "BLOCK_C": 32}),
)


@triton.jit
def _activated(x_ptr, n, ih, iw, cols, valid, sc, sh, H, W, C, ACT: tl.constexpr,
               BN: tl.constexpr):
    """a = act(x·scale + shift) (x without BN) at input pixels (ih, iw) of image n; 0 where
    not `valid` (the zero padding is of the activated input)."""
    off = ((n.to(tl.int64) * H + ih.to(tl.int64)) * W + iw.to(tl.int64))[:, None] * C \
        + cols[None, :]
    x = tl.load(x_ptr + off, mask=valid, other=0.0).to(tl.float32)
    if BN:
        x = apply_act(x * sc[None, :] + sh[None, :], ACT)
    return tl.where(valid, x, 0.0)


@triton.jit
def _tap(x_ptr, n, oh, ow, kh, kw, stride, pt, pl, pmask, cols, cmask, sc, sh, H, W, C,
         ACT: tl.constexpr, BN: tl.constexpr):
    """The activated input that tap (kh, kw) of output pixels (oh, ow) reads (0 in the
    padding)."""
    ih = oh * stride - pt + kh
    iw = ow * stride - pl + kw
    ok = pmask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    return _activated(x_ptr, n, ih, iw, cols, ok[:, None] & cmask[None, :], sc, sh, H, W, C,
                      ACT, BN)


@triton.jit
def _dw_tile(scale_ptr, shift_ptr, C, P, OW, n_pt, BLOCK_P: tl.constexpr,
             BLOCK_C: tl.constexpr):
    """This program's tile: (pid, image n, pixel indices p of P per image with their row / column
    in a map OW wide, channels, masks, scale, shift)."""
    pid = tl.program_id(0)
    n = pid // n_pt
    p = (pid % n_pt) * BLOCK_P + tl.arange(0, BLOCK_P)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    sc = tl.load(scale_ptr + cols, mask=cmask, other=0.0)
    sh = tl.load(shift_ptr + cols, mask=cmask, other=0.0)
    return pid, n, p, p // OW, p % OW, cols, cmask, p < P, sc, sh


@triton.jit
def _dw_fwd_kernel(x_ptr, w_ptr, scale_ptr, shift_ptr, z_ptr, H, W, C, OH, OW, n_pt, stride,
                   pt, pl, K: tl.constexpr, ACT: tl.constexpr, BN: tl.constexpr,
                   BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    _, n, p, oh, ow, cols, cmask, pmask, sc, sh = _dw_tile(
        scale_ptr, shift_ptr, C, OH * OW, OW, n_pt, BLOCK_P, BLOCK_C)
    acc = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
    for kh in range(K):  # a loop (not unrolled): k² unrolled taps spill at k = 5
        for kw in tl.static_range(K):
            a = _tap(x_ptr, n, oh, ow, kh, kw, stride, pt, pl, pmask, cols, cmask, sc, sh, H, W,
                     C, ACT, BN)
            wv = tl.load(w_ptr + (kh * K + kw) * C + cols, mask=cmask, other=0.0)
            acc += a * wv[None, :]
    off = (n.to(tl.int64) * OH * OW + p.to(tl.int64))[:, None] * C + cols[None, :]
    tl.store(z_ptr + off, acc.to(z_ptr.dtype.element_ty), mask=pmask[:, None] & cmask[None, :])


@triton.jit
def _dw_dx_kernel(x_ptr, dz_ptr, w_ptr, mean_ptr, scale_ptr, shift_ptr, dx_ptr, part_ptr, H, W,
                  C, OH, OW, n_pt, stride, pt, pl, K: tl.constexpr, ACT: tl.constexpr,
                  BN: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    pid, n, p, ih, iw, cols, cmask, pmask, sc, sh = _dw_tile(
        scale_ptr, shift_ptr, C, H * W, W, n_pt, BLOCK_P, BLOCK_C)
    acc = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
    for kh in range(K):  # a loop (not unrolled): k² unrolled taps spill at k = 5
        for kw in tl.static_range(K):
            th = ih + pt - kh  # oh·stride, if a tap reads (ih, iw) through (kh, kw)
            tw = iw + pl - kw
            th0, tw0 = tl.maximum(th, 0), tl.maximum(tw, 0)
            ok = pmask & (th >= 0) & (tw >= 0) & (th0 % stride == 0) & (tw0 % stride == 0) \
                & (th0 // stride < OH) & (tw0 // stride < OW)
            off = ((n.to(tl.int64) * OH + (th0 // stride).to(tl.int64)) * OW
                   + (tw0 // stride).to(tl.int64))[:, None] * C + cols[None, :]
            d = tl.load(dz_ptr + off, mask=ok[:, None] & cmask[None, :], other=0.0)
            wv = tl.load(w_ptr + (kh * K + kw) * C + cols, mask=cmask, other=0.0)
            acc += d.to(tl.float32) * wv[None, :]
    mask = pmask[:, None] & cmask[None, :]
    xoff = (n.to(tl.int64) * H * W + p.to(tl.int64))[:, None] * C + cols[None, :]
    if BN:
        x = tl.load(x_ptr + xoff, mask=mask, other=0.0).to(tl.float32)
        mu = tl.load(mean_ptr + cols, mask=cmask, other=0.0)
        _, g = _act_and_grad(x * sc[None, :] + sh[None, :], ACT)
        dv = tl.where(mask, acc * g, 0.0)
        tl.store(dx_ptr + xoff, (dv * sc[None, :]).to(dx_ptr.dtype.element_ty), mask=mask)
        base = part_ptr + pid.to(tl.int64) * 2 * C + cols
        tl.store(base, tl.sum(dv * (x - mu[None, :]), axis=0), mask=cmask)
        tl.store(base + C, tl.sum(dv, axis=0), mask=cmask)
    else:
        tl.store(dx_ptr + xoff, acc.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dw_dw_kernel(x_ptr, dz_ptr, scale_ptr, shift_ptr, part_ptr, H, W, C, OH, OW, n_pt, stride,
                  pt, pl, K: tl.constexpr, ACT: tl.constexpr, BN: tl.constexpr,
                  BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    pid, n, p, oh, ow, cols, cmask, pmask, sc, sh = _dw_tile(
        scale_ptr, shift_ptr, C, OH * OW, OW, n_pt, BLOCK_P, BLOCK_C)
    zoff = (n.to(tl.int64) * OH * OW + p.to(tl.int64))[:, None] * C + cols[None, :]
    d = tl.load(dz_ptr + zoff, mask=pmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
    base = part_ptr + pid.to(tl.int64) * K * K * C + cols
    for kh in range(K):  # a loop (not unrolled): k² unrolled taps spill at k = 5
        for kw in tl.static_range(K):
            a = _tap(x_ptr, n, oh, ow, kh, kw, stride, pt, pl, pmask, cols, cmask, sc, sh, H, W,
                     C, ACT, BN)
            tl.store(base + (kh * K + kw) * C, tl.sum(d * a, axis=0), mask=cmask)


_ACT_ALIASES = {"swish": "silu", "none": "identity"}  # what the C++ ops' parse_act accepts


def _act_code(act: str) -> int:
    try:
        return ACT_CODES[_ACT_ALIASES.get(act, act)]
    except KeyError:
        raise ValueError(f"unknown activation {act!r}; expected one of "
                         f"{tuple(ACT_CODES)}") from None


def _dw_prep(x, weight, mean, scale, beta, stride, padding):
    N, C, H, W = x.shape
    k = weight.shape[-1]
    left, right, top, bottom = (int(v) for v in padding)
    OH, OW = (H + top + bottom - k) // stride + 1, (W + left + right - k) // stride + 1
    wt = weight.reshape(C, k * k).t().float().contiguous()  # [k·k][C]
    bn = mean is not None
    if bn:
        s, shift, m = _prep(x, mean, scale, beta)
    else:
        s = shift = m = wt  # (unused without BN)
    cfg = DW_CONFIGS.interp if interpreting() else DW_CONFIGS.fixed
    opts = {} if interpreting() else {"num_warps": cfg.num_warps}
    return (N, C, H, W, OH, OW, k, top, left, wt, bn, s, shift, m, cfg.kwargs, opts)


@on_input_device
def dwconv_train(x: torch.Tensor, weight: torch.Tensor, mean, scale, beta, act: str,
                 stride: int, padding) -> torch.Tensor:
    """Launcher: channels_last x (validated by train_ops); z channels_last in x's dtype."""
    N, C, H, W, OH, OW, k, pt, pl, wt, bn, s, shift, _, meta, opts = _dw_prep(
        x, weight, mean, scale, beta, stride, padding)
    z = torch.empty((N, C, OH, OW), dtype=x.dtype, device=x.device,
                    memory_format=torch.channels_last)
    if z.numel() == 0:
        return z
    n_pt = triton.cdiv(OH * OW, meta["BLOCK_P"])
    grid = (check_grid(N * n_pt, "dwconv_train"), triton.cdiv(C, meta["BLOCK_C"]))
    _dw_fwd_kernel[grid](x, wt, s, shift, z, H, W, C, OH, OW, n_pt, stride, pt, pl, K=k,
                         ACT=_act_code(act), BN=bn, **meta, **opts)
    return z


@on_input_device
def dwconv_train_backward(x: torch.Tensor, dz: torch.Tensor, weight: torch.Tensor, mean, scale,
                          beta, act: str, stride: int, padding):
    """Launcher: (dx in x's dtype, dweight in weight's, dscale and dbeta float32 (C,) — (0,)
    without BN), as effnet::dwconv_train_backward."""
    N, C, H, W, OH, OW, k, pt, pl, wt, bn, s, shift, m, meta, opts = _dw_prep(
        x, weight, mean, scale, beta, stride, padding)
    f32 = {"dtype": torch.float32, "device": x.device}
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    cb = C if bn else 0
    if x.numel() == 0:
        return (dx, torch.zeros(weight.shape, dtype=weight.dtype, device=weight.device),
                torch.zeros(cb, **f32), torch.zeros(cb, **f32))
    act_code = _act_code(act)
    ct = triton.cdiv(C, meta["BLOCK_C"])
    n_pt = triton.cdiv(H * W, meta["BLOCK_P"])
    part = torch.zeros((N * n_pt, 2, C), **f32)
    _dw_dx_kernel[(check_grid(N * n_pt, "dwconv_train_backward"), ct)](
        x, dz, wt, m, s, shift, dx, part, H, W, C, OH, OW, n_pt, stride, pt, pl, K=k,
        ACT=act_code, BN=bn, **meta, **opts)
    n_po = triton.cdiv(OH * OW, meta["BLOCK_P"])
    wpart = torch.zeros((N * n_po, k * k, C), **f32)
    _dw_dw_kernel[(check_grid(N * n_po, "dwconv_train_backward"), ct)](
        x, dz, s, shift, wpart, H, W, C, OH, OW, n_po, stride, pt, pl, K=k, ACT=act_code,
        BN=bn, **meta, **opts)
    dweight = wpart.double().sum(0).t().contiguous().view(weight.shape).to(weight.dtype)
    if not bn:
        return dx, dweight, torch.zeros(0, **f32), torch.zeros(0, **f32)
    sums = part.double().sum(0)
    return dx, dweight, sums[0].float(), sums[1].float()
