"""Triton implementation of ``dwconv_bias_act``: depthwise k×k conv + bias + act, SE pool fused.

Formula (x zero outside the image, s = stride, pads = (left, right, top, bottom))::

    y[n, c, ho, wo] = act(bias[c] + Σ_{kh, kw < k} weight[c, 0, kh, kw]
                                         · x[n, c, ho·s − top + kh, wo·s − left + kw])
    Ho = (H + top + bottom − k) // s + 1,   Wo = (W + left + right − k) // s + 1
    pool[n, c] = (1 / (Ho·Wo)) · Σ_{ho, wo} act(...)          (float32, only with return_pool)

Layout: x and y are channels_last (NHWC in memory); weight is (C, 1, k, k) contiguous, i.e. a
(C, k·k) matrix, read in place (one BLOCK_C vector per tap, stride k·k: small and cache resident,
no host-side transpose and no extra launch). Math and accumulation in float32; y is stored in x's
dtype, and the pool is taken from the float32 activations before that cast, so y is never read
back.

Tiling: one program per (n, channel block of BLOCK_C, output tile of BLOCK_H rows × BLOCK_W
columns), flattened into grid axis 0 (column tiles fastest, then row tiles, then channel blocks,
then samples, so neighbouring programs share their input halo in L2). The program keeps a
(BLOCK_H·BLOCK_W, BLOCK_C) float32 accumulator, channels contiguous (coalesced, vectorised along
C when C and the pointers allow it: Triton specialises on 16-byte alignment, so an unaligned x
simply gets narrower loads). The k×k taps are unrolled for k ≤ 7; for larger odd k (any k up to
31 works) the kh loop is a runtime loop and only kw is unrolled. Each tap is one masked load of
the input tile (masks cover padding, image borders, partial tiles and the C tail) plus one
weight vector. On GPUs BLOCK_H, BLOCK_W, BLOCK_C and num_warps are autotuned, keyed on
(C, Wo, k, stride, dtype), over the configs whose tile does not overshoot (C, Ho, Wo) past the
next power of two (_prune_configs); under TRITON_INTERPRET=1 there is a single small config.

Pool (deterministic, no atomics): each program reduces its masked tile over pixels and writes
its (BLOCK_C,) partial sum, already scaled by 1/(Ho·Wo), to a float32 workspace
(N, tiles, C); the launcher then sums the workspace over tiles in fixed order (torch ``sum``).
Results are bitwise reproducible run to run for a given autotuned config (a different config
sums in a different order). The workspace is sized for the config with the most tiles; the
config actually launched is read back from the autotuner's call of the grid function.

Indexing: per-sample base offsets are int64; offsets inside one sample are int32 unless a
sample (with its halo) can pass 2³¹ elements, in which case they are int64 too (``I64``).

Bytes moved: x once (N·H·W·C) + y once (N·Ho·Wo·C), in x's dtype, + weights and bias
(C·(k²+1)), + with the pool a 4·N·tiles·C byte workspace written and read once (a few per
cent of y for the default tiles) and the 4·N·C pool. Halo re-reads across tiles hit L2.
FLOPs: 2·k²·N·C·Ho·Wo.

Status: tested only under the Triton interpreter on the CPU (TRITON_INTERPRET=1), not yet on a
GPU; the GPU configs below are untuned guesses.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ._tuning import least_padded, on_input_device
from .bias_act import ACT_CODES, _act

_UNROLL_K_MAX = tl.constexpr(7)  # taps fully unrolled up to this k; beyond it kh is a runtime loop


def _gpu_configs():
    # (BLOCK_H, BLOCK_W, BLOCK_C, num_warps): from wide, shallow maps (112×112×32) to small,
    # deep ones (7×7×1152).
    return [
        triton.Config({"BLOCK_H": h, "BLOCK_W": w, "BLOCK_C": c}, num_warps=nw)
        for h, w, c, nw in [
            (4, 8, 32, 4), (4, 16, 32, 4), (8, 8, 32, 4), (2, 8, 64, 4), (4, 8, 64, 4),
            (2, 16, 64, 4), (8, 8, 64, 8), (4, 4, 64, 4), (1, 8, 128, 4), (2, 8, 128, 8),
            (4, 4, 128, 4), (2, 4, 256, 8),
        ]
    ]


def _configs():
    if os.environ.get("TRITON_INTERPRET") == "1":  # the interpreter runs every config: keep one
        return [triton.Config({"BLOCK_H": 2, "BLOCK_W": 4, "BLOCK_C": 16})]
    if os.environ.get("EFFNET_TRITON_AUTOTUNE") == "0":  # tests on a GPU: no tuning time
        return [triton.Config({"BLOCK_H": 4, "BLOCK_W": 8, "BLOCK_C": 32}, num_warps=4)]
    return _gpu_configs()


def _prune_configs(configs, nargs, **kwargs):
    """Drop configs whose tile is far wider than the problem (BLOCK_C beyond C, BLOCK_W beyond
    Wo, BLOCK_H beyond Ho, each rounded up to a power of two): they only add masked lanes, and
    autotuning every one of them costs a compile per (C, Wo, k, stride, dtype) key. If none is
    left (tiny problems), keep those with the fewest padded lanes."""
    C, Ho, Wo = nargs["C"], nargs["Ho"], nargs["Wo"]
    kept = [c for c in configs
            if c.kwargs["BLOCK_C"] <= max(32, triton.next_power_of_2(C))
            and c.kwargs["BLOCK_W"] <= max(4, triton.next_power_of_2(Wo))
            and c.kwargs["BLOCK_H"] <= max(1, triton.next_power_of_2(Ho))]
    return kept or least_padded(configs, {"BLOCK_C": C, "BLOCK_H": Ho, "BLOCK_W": Wo})


@triton.jit
def _dw_row(acc, x_base, w_ptr, off0, ih0, iw0, mask_pc, c, kh, H, W, C,
            K: tl.constexpr, I64: tl.constexpr):
    """acc += Σ_kw weight[c, kh, kw] · x[ih0 + kh, iw0 + kw, c] for one kernel row kh."""
    ih = ih0 + kh
    row_ok = (ih >= 0) & (ih < H)
    for kw in tl.static_range(K):
        iw = iw0 + kw
        ok = row_ok & (iw >= 0) & (iw < W)
        tap = kh * W + kw
        if I64:
            tap = tl.cast(tap, tl.int64)  # tl.cast: W may be specialised to a constexpr 1
        xv = tl.load(x_base + off0 + tap * C, mask=mask_pc & ok[:, None], other=0.0)
        wv = tl.load(w_ptr + c * (K * K) + (kh * K + kw), mask=c < C, other=0.0)
        acc += xv.to(tl.float32) * wv.to(tl.float32)[None, :]
    return acc


@triton.autotune(configs=_configs(), key=["C", "Wo", "K", "S"],
                 prune_configs_by={"early_config_prune": _prune_configs})
@triton.jit
def _dwconv_fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, ws_ptr,
                       H, W, C, Ho, Wo, ws_stride_n, inv_hw,
                       K: tl.constexpr, S: tl.constexpr, PAD_T: tl.constexpr,
                       PAD_L: tl.constexpr, ACT: tl.constexpr, POOL: tl.constexpr,
                       I64: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
                       BLOCK_C: tl.constexpr):
    # program -> (n, channel block, row tile, column tile); column tiles vary fastest
    pid = tl.program_id(0)
    n_tw = tl.cdiv(Wo, BLOCK_W)
    n_th = tl.cdiv(Ho, BLOCK_H)
    n_cb = tl.cdiv(C, BLOCK_C)
    tw = pid % n_tw
    t = pid // n_tw
    th = t % n_th
    t = t // n_th
    cb = t % n_cb
    n = (t // n_cb).to(tl.int64)

    p = tl.arange(0, BLOCK_H * BLOCK_W)
    ho = th * BLOCK_H + p // BLOCK_W
    wo = tw * BLOCK_W + p % BLOCK_W
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    pmask = (ho < Ho) & (wo < Wo)
    mask_pc = pmask[:, None] & cmask[None, :]

    # input tile origin (top-left tap) per output pixel; may lie in the padding
    ih0 = ho * S - PAD_T
    iw0 = wo * S - PAD_L
    if I64:
        pix0 = tl.cast(ih0, tl.int64) * W + iw0
    else:
        pix0 = ih0 * W + iw0
    off0 = pix0[:, None] * C + c[None, :]
    x_base = x_ptr + n * H * W * C

    acc = tl.zeros((BLOCK_H * BLOCK_W, BLOCK_C), dtype=tl.float32)
    if K <= _UNROLL_K_MAX:
        for kh in tl.static_range(K):
            acc = _dw_row(acc, x_base, w_ptr, off0, ih0, iw0, mask_pc, c, kh, H, W, C, K, I64)
    else:
        for kh in range(K):
            acc = _dw_row(acc, x_base, w_ptr, off0, ih0, iw0, mask_pc, c, kh, H, W, C, K, I64)

    bv = tl.load(b_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    v = _act(acc + bv[None, :], ACT)

    if I64:
        opix = tl.cast(ho, tl.int64) * Wo + wo
    else:
        opix = ho * Wo + wo
    y_base = y_ptr + n * Ho * Wo * C
    tl.store(y_base + opix[:, None] * C + c[None, :], v.to(y_ptr.dtype.element_ty), mask=mask_pc)

    if POOL:
        part = tl.sum(tl.where(mask_pc, v, 0.0), axis=0) * inv_hw
        tile = th * n_tw + tw
        tl.store(ws_ptr + n * ws_stride_n + tile * C + c, part, mask=cmask)


def _n_tiles(Ho: int, Wo: int, meta) -> int:
    return triton.cdiv(Ho, meta["BLOCK_H"]) * triton.cdiv(Wo, meta["BLOCK_W"])


@on_input_device
def _launch(x, weight, bias, stride, pads, act, return_pool, config=None, force_i64=False):
    """Shared body of the launcher. ``config`` (a dict of BLOCK_H/BLOCK_W/BLOCK_C, optionally
    num_warps) bypasses the autotuner and ``force_i64`` forces 64-bit in-sample offsets: both
    only for tests, which run every GPU config and the int64 path through the interpreter."""
    N, C, H, W = x.shape
    K = weight.shape[-1]
    left, right, top, bottom = pads
    Ho = (H + top + bottom - K) // stride + 1
    Wo = (W + left + right - K) // stride + 1
    y = torch.empty((N, C, Ho, Wo), device=x.device, dtype=x.dtype,
                    memory_format=torch.channels_last)
    if y.numel() == 0:
        pool = torch.zeros((N, C), device=x.device, dtype=torch.float32) if return_pool else None
        return y, pool

    # the workspace must hold the partial sums of whichever config ends up launched
    metas = [c.kwargs for c in _dwconv_fwd_kernel.configs] + ([config] if config else [])
    max_tiles = max(_n_tiles(Ho, Wo, m) for m in metas)
    if return_pool:
        ws = torch.empty((N, max_tiles, C), device=x.device, dtype=torch.float32)
    else:
        ws = y  # never touched: POOL=False compiles the store away
    # in-sample offsets, halo included, must fit in int32; otherwise the I64 variant
    span = max((H + 2 * K) * (W + 2 * K), Ho * Wo) * C
    i64 = force_i64 or span >= 2**31

    launched = {}

    def grid(meta):
        launched.update(meta)  # the autotuner calls this for the config it actually launches last
        programs = N * triton.cdiv(C, meta["BLOCK_C"]) * _n_tiles(Ho, Wo, meta)
        if programs >= 2**31:
            raise RuntimeError(f"dwconv_bias_act (triton): {programs} programs exceed the grid "
                               "limit of 2**31 - 1; split the batch")
        return (programs,)

    args = (x, weight.contiguous(), bias.contiguous(), y, ws, H, W, C, Ho, Wo,
            max_tiles * C, 1.0 / (Ho * Wo))
    consts = dict(K=K, S=stride, PAD_T=top, PAD_L=left, ACT=ACT_CODES[act], POOL=return_pool,
                  I64=i64)
    if config is None:
        _dwconv_fwd_kernel[grid](*args, **consts)
    else:
        _dwconv_fwd_kernel.fn[grid](*args, **consts, **config)

    if not return_pool:
        return y, None
    tiles = _n_tiles(Ho, Wo, launched)
    if max_tiles == 1:
        return y, ws.view(N, C)
    return y, ws[:, :tiles].sum(1)


def dwconv_bias_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int,
                    pads, act: str, return_pool: bool):
    """Launcher: arguments already validated by effnet_kernels.ops (pads = (left, right, top,
    bottom)). Returns (y, pool or None)."""
    return _launch(x, weight, bias, stride, tuple(int(p) for p in pads), act, return_pool)
