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
GPU; every config compiles for sm_90a with Triton 3.6 and 3.8 (benchmarks/triton_aot.py). Some
spill: fp16 small tiles (ptxas stops at 80-96 registers), and under Triton 3.8 several fp32
k = 5 tiles (ptxas allots 32 registers and spills ~3-5 KB). The GPU configs below are untuned
guesses.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    ACT_CODES, ConfigSet, apply_act, dw_accumulate, dw_plan, dw_pool, dw_prune_configs,
    dw_store, dw_tile_index, on_input_device,
)


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


CONFIGS = ConfigSet(
    gpu=tuple(_gpu_configs()),
    fixed=triton.Config({"BLOCK_H": 4, "BLOCK_W": 8, "BLOCK_C": 32}, num_warps=4),
    interp=triton.Config({"BLOCK_H": 2, "BLOCK_W": 4, "BLOCK_C": 16}),
)


_prune_configs = dw_prune_configs  # the autotuner's early prune (tests call it)


@triton.autotune(configs=CONFIGS.configs(), key=["C", "Wo", "K", "S"],
                 prune_configs_by={"early_config_prune": _prune_configs})
@triton.jit
def _dwconv_fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, ws_ptr,
                       H, W, C, Ho, Wo, ws_stride_n, inv_hw,
                       K: tl.constexpr, S: tl.constexpr, PAD_T: tl.constexpr,
                       PAD_L: tl.constexpr, ACT: tl.constexpr, POOL: tl.constexpr,
                       I64: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
                       BLOCK_C: tl.constexpr):
    n, th, tw, ho, wo, c = dw_tile_index(tl.program_id(0), C, Ho, Wo, BLOCK_H, BLOCK_W, BLOCK_C)
    # weight (C, k·k) read in place: channel stride k·k, tap stride 1; no zero point
    acc = dw_accumulate(tl.zeros((BLOCK_H * BLOCK_W, BLOCK_C), dtype=tl.float32), x_ptr, w_ptr,
                        n, ho, wo, c, H, W, C, Ho, Wo, 0.0, K * K, 1, K, S, PAD_T, PAD_L, I64)
    bv = tl.load(b_ptr + c, mask=c < C, other=0.0).to(tl.float32)
    v = apply_act(acc + bv[None, :], ACT)
    dw_store(y_ptr, ws_ptr, v.to(y_ptr.dtype.element_ty), v, n, th, tw, ho, wo, c, C, Ho, Wo,
             ws_stride_n, inv_hw, POOL, I64, BLOCK_W)


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

    metas = [c.kwargs for c in _dwconv_fwd_kernel.configs] + ([config] if config else [])
    plan = dw_plan(N, C, H, W, Ho, Wo, K, metas, force_i64, "dwconv_bias_act")
    if return_pool:
        ws = torch.empty((N, plan.max_tiles, C), device=x.device, dtype=torch.float32)
    else:
        ws = y  # never touched: POOL=False compiles the store away
    args = (x, weight.contiguous(), bias.contiguous(), y, ws, H, W, C, Ho, Wo,
            plan.max_tiles * C, 1.0 / (Ho * Wo))
    consts = dict(K=K, S=stride, PAD_T=top, PAD_L=left, ACT=ACT_CODES[act], POOL=return_pool,
                  I64=plan.i64)
    if config is None:
        _dwconv_fwd_kernel[plan.grid](*args, **consts)
    else:
        _dwconv_fwd_kernel.fn[plan.grid](*args, **consts, **config)
    return y, (dw_pool(ws, plan, N, C, Ho, Wo) if return_pool else None)


def dwconv_bias_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int,
                    pads, act: str, return_pool: bool):
    """Launcher: arguments already validated by effnet_kernels.ops (pads = (left, right, top,
    bottom)). Returns (y, pool or None)."""
    return _launch(x, weight, bias, stride, tuple(int(p) for p in pads), act, return_pool)
