"""Triton implementation of ``pointwise_conv``: a 1×1 conv as a GEMM with fused SE prologue and
bias/act/residual/pool epilogue.

Formula (m = (n, h, w) flattened, HW = H·W, n = m // HW)::

    y[m, co] = act(bias[co] + Σ_ci (x[m, ci] · gate[n, ci]) · w[co, ci]) + residual[m, co]
    pool[n, co] = (1 / HW) · Σ_{m of sample n} y[m, co]       (float32, pool_only: y not written)

Layout: x (N, Cin, H, W) channels_last is a row-major (M = N·HW, Cin) matrix; y and residual
(N, Cout, H, W) channels_last are row-major (M, Cout). w (Cout, Cin) and gate (N, Cin) float32
are read in place through their strides (a reshaped 4-D conv weight or a transposed gate costs
no copy); bias is (Cout,).

Tiling: one program per (BLOCK_M × BLOCK_N) output tile, flattened into grid axis 0 with the
usual grouped ordering (GROUP_M row tiles share each column sweep, so the w panel and the x row
panel stay in L2). The K loop (Cin in steps of BLOCK_K) loads an x tile and a wᵀ tile, masked
on rows, on K (Cin need not be a multiple of 16: 37, 61, ... work) and on Cout, and
accumulates ``tl.dot`` in float32: fp16/bf16 on tensor cores; fp32 with
``input_precision="ieee"`` (exact fp32 FMAs, not TF32: fp32 must meet rel ≤ 1e-5; the argument
exists in Triton 3.0+ and is what 3.6 and 3.8 accept). Under the interpreter bf16 operands are
widened to fp32 first (Triton 3.8's interpreter multiplies the raw bf16 bit patterns as
integers), which is the same math: products of bf16 values are exact in fp32.

Prologue (gate): the SE-scaled tensor is never written. A tile of rows may span several samples
(small H·W), so the gate is gathered per element as a (BLOCK_M, BLOCK_K) tile
``gate[m // HW, k]`` (the sample index of each row is computed once per tile; the gate is tiny
and cache resident), multiplied in float32 and rounded back to x's dtype before ``tl.dot``.

Epilogue: + bias, act (float32), + residual (loaded in x's dtype, added in float32), cast to
x's dtype and stored masked. With pool_only the float32 values are reduced instead (y is never
written): rows of a tile can belong to several samples, so the program loops over the samples
its rows touch and writes one masked row sum per (sample, tile), scaled by 1/HW, into a float32
workspace ``ws[n, slot, co]`` where ``slot = tile − first tile of sample n``; the program owning
a sample's last tile also zero-fills that sample's unused slots, so every slot is written by
every launch (whatever config the autotuner picks, no memset). The launcher sums ws over slots
in fixed order (torch ``sum``): deterministic, no atomics (bitwise reproducible for a given
config). Slots per sample: (HW − 1) // min BLOCK_M + 2. The extra work is one (BLOCK_M ×
BLOCK_N) masked reduction per sample in the tile: negligible unless HW ≪ BLOCK_M.

Configs: on GPUs (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) are autotuned, keyed on
(next power of two of M, Cout, Cin, gate/residual/pool, dtype), over the configs whose tile
does not overshoot (M, Cout, Cin) past the next power of two (_prune_configs); one fixed config
with EFFNET_TRITON_AUTOTUNE=0 and one small config under TRITON_INTERPRET=1.

Indexing: row offsets are int64 from the start (M·Cin and M·Cout may pass 2³¹); the K loop
only advances pointers. Column and K offsets are int32 (Cin, Cout < 2³¹). Alignment: Triton
only specialises integers on divisibility by 16, so the launcher passes DIV_K / DIV_N, the
largest power of two ≤ 16 dividing Cin (and w's, gate's row strides) / Cout, and the kernel
re-derives those values as ``v // d * d``: Cin = 24 or 40 (B0's narrow stages) then still get
16-byte vector loads and stores (for fp16 at Cin = Cout = 24 this took ptxas from 254 scalar-load
registers to 100).

Bytes moved: M·Cin (x) + Cout·Cin (w) + M·Cout (y; or the residual too: 2·M·Cout) in x's dtype,
+ N·Cin·4 (gate); pool_only writes no y, only 4·N·slots·Cout of workspace, read once. FLOPs:
2·M·Cin·Cout (+ M·Cin with the gate).

Status: tested only under the Triton interpreter on the CPU (TRITON_INTERPRET=1), not yet on a
GPU; every GPU config compiles for sm_90a with Triton 3.6 and 3.8 through ptxas
(benchmarks/triton_aot.py: registers, spills, shared memory per config; fp16 lowers to wgmma,
fp32 to FMAs, no TF32). In fp32 the 128×64×64 s4 and 128×256×64 s3 configs need more shared
memory than sm_90 has (the autotuner skips them there) and the largest fp32 tiles spill. The
GPU configs below are untuned guesses.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ._common import (
    ACT_CODES, GROUP_M, ConfigSet, apply_act, gemm_grid, gemm_hints, gemm_prune_configs, gemm_tile,
    grouped_pid, interpreting, on_input_device, pool_store_segmented, pow2_divisor, slots,
)



def _gpu_configs():
    # (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages): big square tiles for the expand and
    # head convs at large batch, tall/narrow ones for project convs to 16–40 channels, small
    # ones for batch-1 late stages (M = 49).
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": GROUP_M},
                      num_warps=w, num_stages=s)
        for m, n, k, w, s in [
            (128, 128, 64, 8, 3), (128, 128, 32, 8, 4), (128, 64, 64, 4, 4),
            (64, 128, 64, 4, 4), (128, 256, 64, 8, 3), (64, 256, 32, 8, 4),
            (64, 64, 64, 4, 4), (64, 64, 32, 4, 3), (256, 64, 32, 8, 3),
            (128, 32, 64, 4, 4), (128, 16, 32, 4, 4), (64, 32, 32, 2, 5),
            (32, 64, 32, 2, 5), (32, 32, 32, 2, 4), (16, 64, 64, 2, 4),
        ]
    ]


CONFIGS = ConfigSet(
    gpu=tuple(_gpu_configs()),
    fixed=triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": GROUP_M},
                        num_warps=4, num_stages=3),
    interp=triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 2}),
)

# the autotuner's early prune: tiles past (M, Cout, Cin) rounded up to a power of two, floor 16
_prune_configs = functools.partial(gemm_prune_configs, k_floor=16)


@triton.autotune(configs=CONFIGS.configs(),
                 key=["M_BUCKET", "Cout", "Cin", "HAS_GATE", "HAS_RES", "POOL"],
                 prune_configs_by={"early_config_prune": _prune_configs})
@triton.jit
def _pointwise_kernel(x_ptr, w_ptr, b_ptr, g_ptr, r_ptr, y_ptr, ws_ptr,
                      M, Cin, Cout, HW, stride_wn, stride_wk, stride_gn, stride_gk,
                      ws_slots, inv_hw, M_BUCKET,
                      ACT: tl.constexpr, HAS_GATE: tl.constexpr, HAS_RES: tl.constexpr,
                      POOL: tl.constexpr, DOT_F32: tl.constexpr, DIV_K: tl.constexpr,
                      DIV_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    Cin, stride_wn, stride_gn, Cout = gemm_hints(Cin, stride_wn, stride_gn, Cout, DIV_K, DIV_N)
    pid_m, pid_n = grouped_pid(tl.program_id(0), M, Cout, BLOCK_M, BLOCK_N, GROUP_M)
    rows, cols, ks, rmask, nmask, samp, a_ptrs, b_ptrs, g_ptrs = gemm_tile(
        x_ptr, w_ptr, g_ptr, pid_m, pid_n, M, Cin, Cout, HW, stride_wn, stride_wk, stride_gn,
        stride_gk, BLOCK_M, BLOCK_N, BLOCK_K)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, Cin, BLOCK_K):
        kmask = ks < Cin - k0
        a = tl.load(a_ptrs, mask=rmask[:, None] & kmask[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=kmask[:, None] & nmask[None, :], other=0.0)
        if HAS_GATE:
            g = tl.load(g_ptrs, mask=rmask[:, None] & kmask[None, :], other=0.0)
            a = (a.to(tl.float32) * g).to(x_ptr.dtype.element_ty)
            g_ptrs += BLOCK_K * stride_gk
        if DOT_F32:  # fp32 inputs (and bf16 under the interpreter): exact fp32 products
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        else:  # fp16 / bf16 on tensor cores, fp32 accumulate
            acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K * stride_wk

    bias = tl.load(b_ptr + cols, mask=nmask, other=0.0).to(tl.float32)
    v = apply_act(acc + bias[None, :], ACT)
    omask = rmask[:, None] & nmask[None, :]
    offs = rows[:, None] * Cout + cols[None, :]
    if HAS_RES:
        v += tl.load(r_ptr + offs, mask=omask, other=0.0).to(tl.float32)

    if POOL:
        pool_store_segmented(v, omask, samp, pid_m, cols, nmask, ws_ptr, M, Cout, HW, ws_slots,
                             inv_hw, BLOCK_M, BLOCK_N)
    else:
        tl.store(y_ptr + offs, v.to(y_ptr.dtype.element_ty), mask=omask)


_slots = slots  # tests check the workspace bound through the module


@on_input_device
def _launch(x, w, bias, act, gate, residual, pool_only, config=None):
    """Shared body of the launcher. ``config`` (BLOCK_M/BLOCK_N/BLOCK_K/GROUP_M, optionally
    num_warps/num_stages) bypasses the autotuner: only for tests, which run every GPU config
    through the interpreter."""
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
        y = None
    else:
        y = torch.empty((N, Cout, H, W), device=dev, dtype=x.dtype,
                        memory_format=torch.channels_last)
        if y.numel() == 0:
            return y

    metas = [c.kwargs for c in _pointwise_kernel.configs] + ([config] if config else [])
    n_slots = slots(HW, min(m["BLOCK_M"] for m in metas))
    if pool_only:
        ws = torch.empty((N, n_slots, Cout), device=dev, dtype=torch.float32)
        out = ws
    else:
        ws = y  # never touched: POOL=False compiles the workspace away
        out = y

    g = gate if gate is not None else x  # dummies: HAS_GATE / HAS_RES = False never read them
    r = residual if residual is not None else x
    dot_f32 = x.dtype == torch.float32 or (interpreting() and x.dtype == torch.bfloat16)
    gs = gate.stride() if gate is not None else (0, 0)
    args = (x, w, bias.contiguous(), g, r, out, ws, M, Cin, Cout, HW, w.stride(0), w.stride(1),
            gs[0], gs[1], n_slots, 1.0 / HW, triton.next_power_of_2(M))
    consts = dict(ACT=ACT_CODES[act], HAS_GATE=gate is not None, HAS_RES=residual is not None,
                  POOL=bool(pool_only), DOT_F32=dot_f32,
                  DIV_K=pow2_divisor(Cin, w.stride(0), gs[0]), DIV_N=pow2_divisor(Cout))
    grid = gemm_grid(M, Cout, "pointwise_conv")
    if config is None:
        _pointwise_kernel[grid](*args, **consts)
    else:
        _pointwise_kernel.fn[grid](*args, **consts, **config)

    if not pool_only:
        return y
    return ws.sum(1)


def pointwise_conv(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, act: str,
                   gate: torch.Tensor | None, residual: torch.Tensor | None,
                   pool_only: bool) -> torch.Tensor:
    """Launcher: arguments already validated by effnet_kernels.ops (w (Cout, Cin) 2-D, x and
    residual channels_last). Returns y (N, Cout, H, W) channels_last in x's dtype, or with
    ``pool_only`` the float32 (N, Cout) spatial mean of y."""
    return _launch(x, w, bias, act, gate, residual, pool_only)
