"""Triton INT8 kernels: ``pointwise_int8`` (int8×int8→int32 GEMM with the SE gate prologue and a
requantising epilogue), ``dwconv_int8`` (depthwise k×k, int32 accumulation, requantising
epilogue, SE pool) and ``quantize_per_tensor`` (float → int8).

The exact semantics are ``reference.py`` ("INT8"): activations int8 per tensor (real =
s·(q − zp)), weights int8 symmetric per output channel, ``scale[c] = s_in·s_w[c]``, exact int32
accumulation, then a float32 epilogue ending in

    requantize(v) = clamp(floor(v·out_inv_scale + 0.5) + out_zp, −128, 127)   (round half up)

Rounding: every kernel is launched with ``enable_fp_fusion=False`` so that no multiply-add of
the gate prologue or of the epilogue is contracted into an FMA: each float32 step is rounded in
the reference's order (an FMA could move a value across a rounding tie, and one gate step of x
changes the accumulator by up to 127·|w|). The only remaining difference from the reference is
the sigmoid of SiLU (a different exp), hence "within 1 LSB". Under the interpreter (numpy,
IEEE float32, no contraction) identity / ReLU / ReLU6 outputs match the reference bit for bit.

Interpreter: Triton 3.8's interpreter computes an int8 ``tl.dot`` with an int32 accumulator as
``np.matmul(a, b, dtype=int32)`` (operands widened to int32 first): exact, checked by the tests
with saturated operands (−128 · −128 summed over K), so no float32 workaround is needed (unlike
the bf16 case in pointwise.py).

Status: tested only under the Triton interpreter on the CPU (TRITON_INTERPRET=1), not yet on a
GPU. Without a GPU, benchmarks/triton_aot.py compiles every config below for sm_90a with
Triton 3.6 and 3.8 (pointwise_int8 with gate + zero point + residual, y and pool_only;
dwconv_int8 at k = 3, 5 and 9, strides 1 and 2; quantize) and reports registers, spills and
shared memory. The largest pointwise config takes 188 KB of shared memory (more than an A100
has, the autotuner skips it there); the PTX has no fma.f32 (only mul.rn / add.rn), and the
pointwise dot lowers to wgmma (BLOCK_M ≥ 64 with ≥ 4 warps) or mma.sync s8. The configs
themselves are untuned guesses.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ._common import (
    ACT_CODES, GROUP_M, ConfigSet, apply_act, dw_accumulate, dw_plan, dw_pool, dw_prune_configs,
    dw_store, dw_tile_index, gemm_grid, gemm_hints, gemm_prune_configs, gemm_tile, grouped_pid,
    on_input_device, pool_store_segmented, pow2_divisor, requantize, slots,
)

_NO_FMA = dict(enable_fp_fusion=False)  # launch option: float32 steps rounded as the reference


# ============================================================================ pointwise_int8
def _pw_gpu_configs():
    # (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages). BLOCK_K ≥ 32: the int8 MMA shapes
    # (mma m16n8k32, wgmma k = 32) need it. Int8 tiles are half the bytes of fp16 ones, so K
    # steps are deeper than in pointwise.py.
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": GROUP_M},
                      num_warps=w, num_stages=s)
        for m, n, k, w, s in [
            (128, 128, 64, 8, 3), (128, 128, 128, 8, 2), (128, 64, 64, 4, 4),
            (64, 128, 128, 4, 3), (128, 128, 64, 8, 4), (64, 256, 64, 8, 3),
            (64, 64, 128, 4, 4), (64, 64, 64, 4, 3), (256, 64, 64, 8, 3),
            (128, 32, 64, 4, 4), (128, 16, 64, 4, 4), (64, 32, 64, 2, 5),
            (32, 64, 64, 2, 5), (32, 32, 64, 4, 4), (16, 64, 128, 2, 4),
        ]
    ]


PW_CONFIGS = ConfigSet(
    gpu=tuple(_pw_gpu_configs()),
    fixed=triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": GROUP_M},
                        num_warps=4, num_stages=3),
    interp=triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 2}),
)

# the autotuner's early prune: tiles past (M, Cout) rounded up to a power of two (floor 16) or
# past Cin (floor 32: the int8 MMA K)
_pw_prune_configs = functools.partial(gemm_prune_configs, k_floor=32)


@triton.autotune(configs=PW_CONFIGS.configs(),
                 key=["M_BUCKET", "Cout", "Cin", "HAS_GATE", "HAS_ZP", "HAS_RES", "POOL"],
                 prune_configs_by={"early_config_prune": _pw_prune_configs})
@triton.jit
def _pw_int8_kernel(x_ptr, w_ptr, wsum_ptr, s_ptr, b_ptr, g_ptr, r_ptr, y_ptr, ws_ptr,
                    M, Cin, Cout, HW, stride_wn, stride_wk, stride_gn, stride_gk,
                    in_zp, out_inv_scale, out_zp, res_scale, res_zp, ws_slots, inv_hw, M_BUCKET,
                    ACT: tl.constexpr, HAS_GATE: tl.constexpr, HAS_ZP: tl.constexpr,
                    HAS_RES: tl.constexpr, POOL: tl.constexpr, DIV_K: tl.constexpr,
                    DIV_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """pointwise_int8: see ``pointwise_int8`` (the launcher) for the formula, layout and
    tiling."""
    Cin, stride_wn, stride_gn, Cout = gemm_hints(Cin, stride_wn, stride_gn, Cout, DIV_K, DIV_N)
    pid_m, pid_n = grouped_pid(tl.program_id(0), M, Cout, BLOCK_M, BLOCK_N, GROUP_M)
    rows, cols, ks, rmask, nmask, samp, a_ptrs, b_ptrs, g_ptrs = gemm_tile(
        x_ptr, w_ptr, g_ptr, pid_m, pid_n, M, Cin, Cout, HW, stride_wn, stride_wk, stride_gn,
        stride_gk, BLOCK_M, BLOCK_N, BLOCK_K)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, Cin, BLOCK_K):
        kmask = ks < Cin - k0
        a = tl.load(a_ptrs, mask=rmask[:, None] & kmask[None, :], other=0)
        b = tl.load(b_ptrs, mask=kmask[:, None] & nmask[None, :], other=0)
        if HAS_GATE:
            # gate_int8: clamp(floor((q − zp)·g + 0.5) + zp), back to int8 before the dot.
            # Masked K lanes become zp, but their w is 0.
            g = tl.load(g_ptrs, mask=rmask[:, None] & kmask[None, :], other=0.0)
            t = tl.floor((a.to(tl.int32) - in_zp).to(tl.float32) * g + 0.5) + in_zp
            a = tl.minimum(tl.maximum(t, -128.0), 127.0).to(tl.int8)
            g_ptrs += BLOCK_K * stride_gk
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)  # int8 tensor cores, int32 accumulate
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K * stride_wk

    if HAS_ZP:  # Σ (q − zp)·w = Σ q·w − zp·Σ w, with Σ_ci w[co, ci] precomputed (wsum)
        acc -= in_zp * tl.load(wsum_ptr + cols, mask=nmask, other=0)[None, :]
    sc = tl.load(s_ptr + cols, mask=nmask, other=0.0)
    bias = tl.load(b_ptr + cols, mask=nmask, other=0.0)
    v = apply_act(acc.to(tl.float32) * sc[None, :] + bias[None, :], ACT)
    omask = rmask[:, None] & nmask[None, :]
    offs = rows[:, None] * Cout + cols[None, :]
    if HAS_RES:
        r = tl.load(r_ptr + offs, mask=omask, other=0)
        v += (r.to(tl.int32) - res_zp).to(tl.float32) * res_scale

    if POOL:
        pool_store_segmented(v, omask, samp, pid_m, cols, nmask, ws_ptr, M, Cout, HW, ws_slots,
                             inv_hw, BLOCK_M, BLOCK_N)
    else:
        tl.store(y_ptr + offs, requantize(v, out_inv_scale, out_zp), mask=omask)


@on_input_device
def _pw_launch(x, w, scale, bias, in_zp, out_inv_scale, out_zp, act, gate, residual,
               res_scale, res_zp, pool_only, config=None, w_sum=None):
    """Shared body of the launcher. ``config`` (BLOCK_M/BLOCK_N/BLOCK_K/GROUP_M, optionally
    num_warps/num_stages) bypasses the autotuner: only for tests."""
    N, Cin, H, W = x.shape
    Cout = w.shape[0]
    HW = H * W
    M = N * HW
    dev = x.device
    if pool_only:
        if N == 0 or Cout == 0:
            return torch.zeros((N, Cout), device=dev, dtype=torch.float32)
        if HW == 0:  # the mean of nothing, as reference.py (torch.mean) gives it
            return torch.full((N, Cout), float("nan"), device=dev, dtype=torch.float32)
    else:
        y = torch.empty((N, Cout, H, W), device=dev, dtype=torch.int8,
                        memory_format=torch.channels_last)
        if y.numel() == 0:
            return y

    metas = [c.kwargs for c in _pw_int8_kernel.configs] + ([config] if config else [])
    n_slots = slots(HW, min(m["BLOCK_M"] for m in metas))
    if pool_only:
        ws = torch.empty((N, n_slots, Cout), device=dev, dtype=torch.float32)
        out = ws
    else:
        ws = y  # never touched: POOL=False compiles the workspace away
        out = y

    has_zp = in_zp != 0
    if has_zp and w_sum is None:
        w_sum = w.sum(dim=1, dtype=torch.int32)  # |Σ w| ≤ 128·Cin: exact in int32
    g = gate if gate is not None else x  # dummies: the HAS_* = False branches never read them
    r = residual if residual is not None else x
    gs = gate.stride() if gate is not None else (0, 0)
    wsum = w_sum.contiguous() if has_zp else scale  # the kernel reads it with unit stride
    args = (x, w, wsum, scale.contiguous(), bias.contiguous(), g, r, out, ws, M, Cin, Cout, HW,
            w.stride(0), w.stride(1), gs[0], gs[1], int(in_zp),
            float(out_inv_scale), int(out_zp), float(res_scale), int(res_zp), n_slots, 1.0 / HW,
            triton.next_power_of_2(M))
    consts = dict(ACT=ACT_CODES[act], HAS_GATE=gate is not None, HAS_ZP=has_zp,
                  HAS_RES=residual is not None, POOL=bool(pool_only),
                  DIV_K=pow2_divisor(Cin, w.stride(0), gs[0]), DIV_N=pow2_divisor(Cout))
    grid = gemm_grid(M, Cout, "pointwise_int8")
    if config is None:
        _pw_int8_kernel[grid](*args, **consts, **_NO_FMA)
    else:
        _pw_int8_kernel.fn[grid](*args, **consts, **config, **_NO_FMA)

    if not pool_only:
        return y
    return ws.sum(1)


def pointwise_int8(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                   in_zp: int, out_inv_scale: float, out_zp: int, act: str,
                   gate: torch.Tensor | None, residual: torch.Tensor | None, res_scale: float,
                   res_zp: int, pool_only: bool, *, w_sum: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """INT8 1×1 conv: int8×int8→int32 GEMM, SE gate prologue, requantising epilogue.

    Formula (m = (n, h, w) flattened, HW = H·W, n = m // HW; reference.pointwise_int8)::

        xg[m, ci]  = clamp(floor((x − in_zp)·gate[n, ci] + 0.5) + in_zp)   (int8; x without gate)
        acc[m, co] = Σ_ci xg[m, ci]·w[co, ci] − in_zp·wsum[co]             (int32, exact)
        a[m, co]   = act(acc·scale[co] + bias[co]) + res_scale·(residual − res_zp)   (float32)
        y[m, co]   = clamp(floor(a·out_inv_scale + 0.5) + out_zp, −128, 127)         (int8)
        pool[n, co] = (1 / HW)·Σ_{m of sample n} a[m, co]        (float32, pool_only: no y)

    Zero point: the GEMM runs on the raw int8 x (x − in_zp spans 9 bits), and the correction
    uses wsum[co] = Σ_ci w[co, ci], precomputed by the launcher with one torch reduction
    (int32, Cout·Cin bytes read; a caller holding constant weights can pass ``w_sum`` to skip
    it) and applied once in the epilogue: no extra work in the K loop. in_zp = 0 skips it.

    Layout: x (N, Cin, H, W) int8 channels_last is a row-major (M = N·HW, Cin) matrix; y and
    residual (N, Cout, H, W) int8 channels_last are row-major (M, Cout). w (Cout, Cin) int8 and
    gate (N, Cin) float32 are read in place through their strides; scale, bias (Cout,) float32.

    Tiling (as pointwise.py): one program per (BLOCK_M × BLOCK_N) output tile, grouped ordering
    (GROUP_M row tiles share a column sweep); the K loop loads an int8 x tile and an int8 wᵀ
    tile (masked on rows, K tail and Cout tail: 37, 61 work), applies the gate on the loaded x
    tile (per-element gather ``gate[m // HW, k]``, tiles may span samples), and accumulates
    ``tl.dot(int8, int8, int32)`` (int8 tensor cores: mma / wgmma). Epilogue in float32 as
    above, stored int8 masked; with pool_only, deterministic per-(sample, tile) partials into a
    float32 workspace summed in fixed order by the launcher (no atomics, no memset), exactly as
    the float pointwise kernel: run to run deterministic for one config, but the tile shape
    sets the summation order, so the pool's last bits can differ between configs (and
    between GPUs whose autotuning picks differently; within the rel 1e-5 the tests allow).
    Configs: autotuned on GPUs, keyed on (next pow2 of M, Cout, Cin, gate/zp/residual/pool),
    pruned to tiles that do not overshoot the problem; one fixed
    config with EFFNET_TRITON_AUTOTUNE=0, one small one under TRITON_INTERPRET=1. Row offsets
    are int64; alignment hints DIV_K / DIV_N as in pointwise.py.

    Bytes moved: M·Cin (x) + Cout·Cin (w) + M·Cout (y; 2·M·Cout with the residual), all int8,
    + 4·N·Cin (gate) + 12·Cout (scale, bias, wsum); pool_only writes only 4·N·slots·Cout.
    Integer ops: 2·M·Cin·Cout (+ ~6·M·Cin float ops of gate prologue).

    Status: tested only under the Triton interpreter on the CPU, not yet on a GPU.

    Returns y (N, Cout, H, W) int8 channels_last, or with ``pool_only`` the float32 (N, Cout)
    mean of ``a``. Arguments are validated by effnet_kernels.ops."""
    return _pw_launch(x, w, scale, bias, in_zp, out_inv_scale, out_zp, act, gate, residual,
                      res_scale, res_zp, pool_only, w_sum=w_sum)


# ============================================================================ dwconv_int8
def _dw_gpu_configs():
    # (BLOCK_H, BLOCK_W, BLOCK_C, num_warps): int8 channels are 1 byte, so channel blocks are
    # at least 32 wide (32-byte segments per pixel).
    return [
        triton.Config({"BLOCK_H": h, "BLOCK_W": w, "BLOCK_C": c}, num_warps=nw)
        for h, w, c, nw in [
            (4, 8, 32, 4), (4, 16, 32, 8), (8, 8, 32, 8), (2, 8, 64, 4), (4, 8, 64, 8),
            (2, 16, 64, 8), (8, 4, 64, 8), (4, 4, 64, 4), (1, 8, 128, 4), (2, 8, 128, 8),
            (4, 4, 128, 8), (2, 4, 256, 8),
        ]
    ]


DW_CONFIGS = ConfigSet(
    gpu=tuple(_dw_gpu_configs()),
    fixed=triton.Config({"BLOCK_H": 4, "BLOCK_W": 8, "BLOCK_C": 64}, num_warps=4),
    interp=triton.Config({"BLOCK_H": 4, "BLOCK_W": 4, "BLOCK_C": 32}),
)


@triton.autotune(configs=DW_CONFIGS.configs(), key=["C", "Wo", "K", "S"],
                 prune_configs_by={"early_config_prune": dw_prune_configs})
@triton.jit
def _dw_int8_kernel(x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, ws_ptr,
                    H, W, C, Ho, Wo, ws_stride_n, inv_hw, in_zp, out_inv_scale, out_zp,
                    K: tl.constexpr, S: tl.constexpr, PAD_T: tl.constexpr, PAD_L: tl.constexpr,
                    ACT: tl.constexpr, POOL: tl.constexpr, I64: tl.constexpr,
                    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    """dwconv_int8: see ``dwconv_int8`` (the launcher) for the formula, layout and tiling."""
    n, th, tw, ho, wo, c = dw_tile_index(tl.program_id(0), C, Ho, Wo, BLOCK_H, BLOCK_W, BLOCK_C)
    # weight transposed to (k·k, C): channel stride 1, tap stride C; zero point in_zp
    acc = dw_accumulate(tl.zeros((BLOCK_H * BLOCK_W, BLOCK_C), dtype=tl.int32), x_ptr, w_ptr,
                        n, ho, wo, c, H, W, C, Ho, Wo, in_zp, 1, C, K, S, PAD_T, PAD_L, I64)
    cmask = c < C
    sc = tl.load(s_ptr + c, mask=cmask, other=0.0)
    bv = tl.load(b_ptr + c, mask=cmask, other=0.0)
    v = apply_act(acc.to(tl.float32) * sc[None, :] + bv[None, :], ACT)
    dw_store(y_ptr, ws_ptr, requantize(v, out_inv_scale, out_zp), v, n, th, tw, ho, wo, c, C,
             Ho, Wo, ws_stride_n, inv_hw, POOL, I64, BLOCK_W)


@on_input_device
def _dw_launch(x, weight, scale, bias, stride, pads, in_zp, out_inv_scale, out_zp, act,
               return_pool, config=None, force_i64=False):
    """Shared body of the launcher. ``config`` bypasses the autotuner and ``force_i64`` forces
    64-bit in-sample offsets: both only for tests."""
    N, C, H, W = x.shape
    K = weight.shape[-1]
    left, right, top, bottom = pads
    Ho = (H + top + bottom - K) // stride + 1
    Wo = (W + left + right - K) // stride + 1
    y = torch.empty((N, C, Ho, Wo), device=x.device, dtype=torch.int8,
                    memory_format=torch.channels_last)
    if y.numel() == 0:
        pool = torch.zeros((N, C), device=x.device, dtype=torch.float32) if return_pool else None
        return y, pool

    metas = [c.kwargs for c in _dw_int8_kernel.configs] + ([config] if config else [])
    plan = dw_plan(N, C, H, W, Ho, Wo, K, metas, force_i64, "dwconv_int8")
    if return_pool:
        ws = torch.empty((N, plan.max_tiles, C), device=x.device, dtype=torch.float32)
    else:
        ws = y  # never touched: POOL=False compiles the store away
    # (k·k, C): one contiguous channel vector per tap (a (C, k·k) read strides by k·k bytes and
    # compiles to one byte load per channel per tap: 400 scalar loads and spills at k = 5)
    wt = weight.reshape(C, K * K).t().contiguous()
    args = (x, wt, scale.contiguous(), bias.contiguous(), y, ws, H, W, C, Ho,
            Wo, plan.max_tiles * C, 1.0 / (Ho * Wo), int(in_zp), float(out_inv_scale),
            int(out_zp))
    consts = dict(K=K, S=stride, PAD_T=top, PAD_L=left, ACT=ACT_CODES[act],
                  POOL=bool(return_pool), I64=plan.i64)
    if config is None:
        _dw_int8_kernel[plan.grid](*args, **consts, **_NO_FMA)
    else:
        _dw_int8_kernel.fn[plan.grid](*args, **consts, **config, **_NO_FMA)
    return y, (dw_pool(ws, plan, N, C, Ho, Wo) if return_pool else None)


def dwconv_int8(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor,
                stride: int, pads, in_zp: int, out_inv_scale: float, out_zp: int, act: str,
                return_pool: bool):
    """INT8 depthwise k×k conv + dequantise + bias + act + requantise (+ the SE pool).

    Formula (s = stride, pads = (left, right, top, bottom); reference.dwconv_int8)::

        acc[n, c, ho, wo] = Σ_{kh, kw: tap inside the image} (x[n, c, ho·s − top + kh,
                                     wo·s − left + kw] − in_zp)·w[c, 0, kh, kw]    (int32)
        a = act(acc·scale[c] + bias[c])                                            (float32)
        y = clamp(floor(a·out_inv_scale + 0.5) + out_zp, −128, 127)                (int8)
        pool[n, c] = (1 / (Ho·Wo))·Σ_{ho, wo} a                  (float32, with return_pool)

    Out-of-image taps are loaded as in_zp, i.e. contribute exactly 0 (real zero padding).
    |acc| ≤ 255·128·k²: int32 for any k.

    Layout: x, y int8 channels_last (NHWC); scale, bias float32 (C,); weight int8 (C, 1, k, k),
    transposed by the launcher into a (k·k, C) matrix (one small torch copy, C·k² bytes), so
    each tap reads one contiguous channel vector: reading the (C, k·k) weight in place strides
    by k² bytes and compiled (sm_90, k = 5) to 16 one-byte loads per tap per thread, 250+ registers
    and up to 2.7 KB of spills; transposed, the same tiles take 60-127 registers.

    Tiling (as dwconv.py): one program per (n, BLOCK_C channels, BLOCK_H × BLOCK_W output
    tile), column tiles fastest; a (BLOCK_H·BLOCK_W, BLOCK_C) int32 accumulator, channels
    contiguous; taps unrolled for k ≤ 7, kh a runtime loop beyond. The pool is taken from the
    float32 ``a`` before requantisation: each program writes one (BLOCK_C,) partial, scaled by
    1/(Ho·Wo), to a float32 workspace (N, tiles, C) that the launcher sums in fixed order
    (deterministic, no atomics; the tile shape sets the summation order, so the pool's last
    bits depend on the autotuned config). Offsets int64 per sample, int32 inside a sample
    unless it can pass 2³¹ elements (I64). Autotuned on GPUs (key C, Wo, k, stride), one config with
    EFFNET_TRITON_AUTOTUNE=0, one small config under the interpreter.

    Bytes moved: N·H·W·C (x) + N·Ho·Wo·C (y), int8, + C·(3k² + 8) (weight transpose and read,
    scale, bias), + with the pool a 4·N·tiles·C workspace written and read once. Integer ops:
    2·k²·N·C·Ho·Wo.

    Status: tested only under the Triton interpreter on the CPU, not yet on a GPU.

    Returns (y, pool or None). Arguments are validated by effnet_kernels.ops."""
    return _dw_launch(x, weight, scale, bias, stride, tuple(int(p) for p in pads), in_zp,
                      out_inv_scale, out_zp, act, return_pool)


# ============================================================================ quantize_per_tensor
QUANTIZE_CONFIGS = ConfigSet(  # not autotuned: 1-D blocks of BLOCK elements, 4 warps
    gpu=(triton.Config({"BLOCK": 1024}),),
    fixed=triton.Config({"BLOCK": 1024}),
    interp=triton.Config({"BLOCK": 256}),
)


@triton.jit
def _quantize_kernel(x_ptr, y_ptr, numel, inv_scale, zp, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, requantize(x, inv_scale, zp), mask=mask)


@on_input_device
def quantize_per_tensor(x: torch.Tensor, inv_scale: float, zp: int) -> torch.Tensor:
    """Float x → int8 clamp(floor(x·inv_scale + 0.5) + zp, −128, 127) (reference.requantize,
    x widened to float32 first). Layout: a 4-D x is made channels_last (as the reference's
    output), anything else contiguous; the kernel is a flat elementwise pass over the dense
    storage (1-D blocks of 1024 elements, 256 under the interpreter; int64 offsets). Bytes:
    numel·(x's element size + 1). Status: tested only under the Triton interpreter on the CPU,
    not yet on a GPU."""
    fmt = torch.channels_last if x.dim() == 4 else torch.contiguous_format
    xc = x.contiguous(memory_format=fmt)
    y = torch.empty(xc.shape, device=x.device, dtype=torch.int8, memory_format=fmt)
    numel = xc.numel()
    if numel == 0:
        return y
    block = QUANTIZE_CONFIGS.configs()[0].kwargs["BLOCK"]
    _quantize_kernel[(triton.cdiv(numel, block),)](xc, y, numel, float(inv_scale), int(zp),
                                                   BLOCK=block, **_NO_FMA)
    return y
