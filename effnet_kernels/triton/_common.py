"""What the float and int8 Triton kernels share: the activation and requantisation steps, the
config switch, the device guard, and the skeletons of the two kernel families as @triton.jit
helpers (Triton inlines them, so the compiled kernels are the same as with the code written out
in place).

* GEMM (pointwise.py, quant.pointwise_int8): grouped program ids (``grouped_pid``), the tile's
  row / column / K offsets and x, wᵀ, gate pointers (``gemm_tile``), the alignment hints
  (``gemm_hints``) and the deterministic segmented pool store (``pool_store_segmented``);
  launcher side ``gemm_grid`` and ``slots``.
* Depthwise (dwconv.py, quant.dwconv_int8): program → (n, channel block, row tile, column tile)
  (``dw_tile_index``), the k×k tap accumulation with an optional zero point (``dw_accumulate``)
  and the output + pool-partial store (``dw_store``); launcher side ``dw_plan``, ``dw_pool``.

Every kernel module holds its configs in a ``ConfigSet`` named ``CONFIGS`` (quant.py: one per
kernel), which benchmarks/triton_aot.py compiles ahead of time.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

ACT_CODES = {"identity": 0, "relu": 1, "relu6": 2, "silu": 3}
GROUP_M = 8  # GEMM row tiles per column sweep (grouped program ordering) on GPUs
UNROLL_K_MAX = tl.constexpr(7)  # depthwise taps fully unrolled up to this k; beyond, kh loops


def interpreting() -> bool:
    """True under TRITON_INTERPRET=1 (kernels run by the CPU interpreter)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


class ConfigSet(NamedTuple):
    """The configs of one kernel. ``gpu``: autotuned on GPUs; ``fixed``: the only one with
    EFFNET_TRITON_AUTOTUNE=0 (GPU tests: no tuning time); ``interp``: the only one under
    TRITON_INTERPRET=1 (the interpreter would run every config)."""
    gpu: tuple
    fixed: triton.Config
    interp: triton.Config

    def configs(self) -> list:
        """The configs this process autotunes over: the one interpreter / autotune switch."""
        if interpreting():
            return [self.interp]
        if os.environ.get("EFFNET_TRITON_AUTOTUNE") == "0":
            return [self.fixed]
        return list(self.gpu)

    def compiled(self) -> list:
        """Every config a GPU run can compile (gpu and fixed, without duplicates)."""
        out, seen = [], set()
        for c in (*self.gpu, self.fixed):
            key = (tuple(sorted(c.kwargs.items())), c.num_warps, c.num_stages)
            if key not in seen:
                seen.add(key)
                out.append(c)
        return out


def least_padded(configs, sizes: dict):
    """The configs whose tiles pad the problem least: ``sizes`` maps a block name (e.g.
    "BLOCK_C") to the problem extent it tiles; padded lanes = prod(cdiv(size, block) * block).
    The fallback of the prune functions when every config overshoots a tiny problem."""
    def padded(c):
        n = 1
        for name, size in sizes.items():
            n *= triton.cdiv(size, c.kwargs[name]) * c.kwargs[name]
        return n

    least = min(padded(c) for c in configs)
    return [c for c in configs if padded(c) == least]


def gemm_prune_configs(configs, nargs, k_floor: int, **kwargs):
    """Early prune of the GEMM kernels: drop configs whose tile is far larger than the problem
    (BLOCK_M beyond M, BLOCK_N beyond Cout, each rounded up to a power of two, floor 16;
    BLOCK_K beyond Cin, floor ``k_floor``): they only add masked lanes and tuning time. If none
    is left, keep those with the fewest padded lanes."""
    M, Cout, Cin = nargs["M"], nargs["Cout"], nargs["Cin"]

    def cap(v, floor):
        return max(floor, triton.next_power_of_2(max(v, 1)))

    kept = [c for c in configs
            if c.kwargs["BLOCK_M"] <= cap(M, 16) and c.kwargs["BLOCK_N"] <= cap(Cout, 16)
            and c.kwargs["BLOCK_K"] <= cap(Cin, k_floor)]
    return kept or least_padded(configs, {"BLOCK_M": M, "BLOCK_N": Cout,
                                          "BLOCK_K": max(Cin, 1)})


def dw_prune_configs(configs, nargs, **kwargs):
    """Early prune of the depthwise kernels: drop configs whose tile is far wider than the
    problem (BLOCK_C beyond C, BLOCK_W beyond Wo, BLOCK_H beyond Ho, each rounded up to a power
    of two): they only add masked lanes, and autotuning every one of them costs a compile per
    (C, Wo, k, stride, dtype) key. If none is left (tiny problems), keep those with the fewest
    padded lanes."""
    C, Ho, Wo = nargs["C"], nargs["Ho"], nargs["Wo"]
    kept = [c for c in configs
            if c.kwargs["BLOCK_C"] <= max(32, triton.next_power_of_2(C))
            and c.kwargs["BLOCK_W"] <= max(4, triton.next_power_of_2(Wo))
            and c.kwargs["BLOCK_H"] <= max(1, triton.next_power_of_2(Ho))]
    return kept or least_padded(configs, {"BLOCK_C": C, "BLOCK_H": Ho, "BLOCK_W": Wo})


def on_input_device(launcher):
    """Run ``launcher`` with its first tensor argument's CUDA device current: Triton launches on
    the current device, so without this a tensor on cuda:1 while cuda:0 is current would be read
    by a kernel on the wrong device (an illegal address, not an error). No-op for CPU tensors
    (the interpreter)."""
    @functools.wraps(launcher)
    def wrapper(*args, **kwargs):
        t = next((a for a in args if isinstance(a, torch.Tensor)), None)
        ctx = (torch.cuda.device(t.device) if t is not None and t.is_cuda
               else contextlib.nullcontext())
        with ctx:
            return launcher(*args, **kwargs)
    return wrapper


def check_grid(programs: int, op: str) -> int:
    """``programs`` for a 1-D grid, or a clear error past the CUDA limit of 2³¹ − 1."""
    if programs >= 2**31:
        raise RuntimeError(f"{op} (triton): {programs} programs exceed the grid limit of "
                           "2**31 - 1; split the batch")
    return programs


# ================================================================= elementwise steps
@triton.jit
def apply_act(v, ACT: tl.constexpr):
    """act(v) in float32; ACT is one of ACT_CODES."""
    if ACT == 3:
        v = v * tl.sigmoid(v)
    elif ACT == 2:
        v = tl.minimum(tl.maximum(v, 0.0), 6.0)
    elif ACT == 1:
        v = tl.maximum(v, 0.0)
    return v


@triton.jit
def requantize(v, out_inv_scale, out_zp):
    """int8 clamp(floor(v·out_inv_scale + 0.5) + out_zp, −128, 127) of float32 v."""
    t = tl.floor(v * out_inv_scale + 0.5) + out_zp
    return tl.minimum(tl.maximum(t, -128.0), 127.0).to(tl.int8)


# ================================================================= GEMM (1×1 conv) skeleton
def slots(HW: int, block_m: int) -> int:
    """Most row tiles of height block_m that one sample of HW rows can touch."""
    return (HW - 1) // block_m + 2


def pow2_divisor(*values: int) -> int:
    """Largest power of two ≤ 16 dividing every value (0 counts as divisible by anything)."""
    d = 16
    while d > 1 and any(v % d for v in values):
        d //= 2
    return d


def gemm_grid(M: int, Cout: int, op: str):
    """The 1-D grid function of a (M × Cout) GEMM launch: one program per output tile."""
    def grid(meta):
        return (check_grid(triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(Cout, meta["BLOCK_N"]),
                           op),)
    return grid


@triton.jit
def gemm_hints(Cin, stride_wn, stride_gn, Cout, DIV_K: tl.constexpr, DIV_N: tl.constexpr):
    """Alignment hints (Triton only specialises integers on divisibility by 16): Cin and the row
    strides of w and gate are multiples of DIV_K, Cout of DIV_N. v // d * d == v when d divides
    v, and the analysis then sees a multiple of d (e.g. 16-byte fp16 loads at Cin = 24)."""
    return (Cin // DIV_K * DIV_K, stride_wn // DIV_K * DIV_K, stride_gn // DIV_K * DIV_K,
            Cout // DIV_N * DIV_N)


@triton.jit
def grouped_pid(pid, M, Cout, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                GROUP_M: tl.constexpr):
    """program → (row tile, column tile), grouped: GROUP_M row tiles sweep the columns
    together, so the w panel and the x row panel stay in L2."""
    n_pm = tl.cdiv(M, BLOCK_M)
    n_pn = tl.cdiv(Cout, BLOCK_N)
    per_group = GROUP_M * n_pn
    first_pm = (pid // per_group) * GROUP_M
    group_m = tl.minimum(n_pm - first_pm, GROUP_M)
    pid_m = first_pm + (pid % per_group) % group_m
    pid_n = (pid % per_group) // group_m
    return pid_m, pid_n


@triton.jit
def gemm_tile(x_ptr, w_ptr, g_ptr, pid_m, pid_n, M, Cin, Cout, HW, stride_wn, stride_wk,
              stride_gn, stride_gk, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              BLOCK_K: tl.constexpr):
    """Offsets, masks and first-K-step pointers of output tile (pid_m, pid_n): rows (int64),
    cols, ks; the sample of each row (``samp``, for the gate gather and the pool segments);
    pointers to the x tile (BLOCK_M, BLOCK_K), the wᵀ tile (BLOCK_K, BLOCK_N) and the gate
    tile gate[samp, k] (BLOCK_M, BLOCK_K; dead code when the kernel has no gate)."""
    rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    rmask = rows < M
    nmask = cols < Cout
    samp = rows // HW
    a_ptrs = x_ptr + rows[:, None] * Cin + ks[None, :]
    b_ptrs = w_ptr + cols[None, :] * stride_wn + ks[:, None] * stride_wk
    g_ptrs = g_ptr + samp[:, None] * stride_gn + ks[None, :] * stride_gk
    return rows, cols, ks, rmask, nmask, samp, a_ptrs, b_ptrs, g_ptrs


@triton.jit
def pool_store_segmented(v, omask, samp, pid_m, cols, nmask, ws_ptr, M, Cout, HW, ws_slots,
                         inv_hw, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Segmented row sums of the float32 tile v: rows of a tile can belong to several samples,
    so one masked sum per sample touched, scaled by inv_hw, goes to ws[n, slot, cols] with
    slot = pid_m − first tile of sample n; the program owning a sample's last tile zero-fills
    that sample's unused slots, so every slot is written by every launch (no memset, no
    atomics, deterministic)."""
    v = tl.where(omask, v, 0.0)
    m0 = pid_m.to(tl.int64) * BLOCK_M
    s_lo = m0 // HW
    s_hi = (tl.minimum(m0 + BLOCK_M, M) - 1) // HW
    zero = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for sn in range(s_lo, s_hi + 1):
        part = tl.sum(tl.where((samp == sn)[:, None], v, 0.0), axis=0) * inv_hw
        first = (sn * HW) // BLOCK_M
        last = ((sn + 1) * HW - 1) // BLOCK_M
        base = ws_ptr + sn * ws_slots * Cout + cols
        tl.store(base + (pid_m - first) * Cout, part, mask=nmask)
        if pid_m == last:  # zero the slots this config leaves unused for sample sn
            for j in range(last - first + 1, ws_slots):
                tl.store(base + j * Cout, zero, mask=nmask)


# ================================================================= depthwise skeleton
def n_tiles(Ho: int, Wo: int, meta) -> int:
    """Output tiles of one (sample, channel block) for a BLOCK_H × BLOCK_W config."""
    return triton.cdiv(Ho, meta["BLOCK_H"]) * triton.cdiv(Wo, meta["BLOCK_W"])


class DwPlan(NamedTuple):
    """Launch plan of a depthwise kernel (see ``dw_plan``)."""
    max_tiles: int   # pool workspace tiles per sample (the config with the most tiles)
    i64: bool        # 64-bit in-sample offsets
    grid: object     # grid function; records the launched config in ``launched``
    launched: dict   # meta of the config the autotuner launched last


def dw_plan(N, C, H, W, Ho, Wo, K, metas, force_i64, op) -> DwPlan:
    """The pool workspace must hold the partial sums of whichever of ``metas`` gets launched;
    in-sample offsets, halo included, must fit in int32, otherwise the I64 variant."""
    max_tiles = max(n_tiles(Ho, Wo, m) for m in metas)
    span = max((H + 2 * K) * (W + 2 * K), Ho * Wo) * C
    launched = {}

    def grid(meta):
        launched.update(meta)  # the autotuner calls this for the config it launches last
        return (check_grid(N * triton.cdiv(C, meta["BLOCK_C"]) * n_tiles(Ho, Wo, meta), op),)

    return DwPlan(max_tiles, force_i64 or span >= 2**31, grid, launched)


def dw_pool(ws, plan: DwPlan, N: int, C: int, Ho: int, Wo: int):
    """The (N, C) pool from the workspace: its partials summed over tiles in fixed order."""
    if plan.max_tiles == 1:
        return ws.view(N, C)
    return ws[:, :n_tiles(Ho, Wo, plan.launched)].sum(1)


@triton.jit
def dw_tile_index(pid, C, Ho, Wo, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
                  BLOCK_C: tl.constexpr):
    """program → (n, row tile th, column tile tw; output rows ho, columns wo of the tile's
    BLOCK_H·BLOCK_W pixels, its channels c). Column tiles vary fastest, then row tiles, then
    channel blocks, then samples (neighbouring programs share their input halo in L2)."""
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
    return n, th, tw, ho, wo, c


@triton.jit
def _dw_row(acc, x_base, w_ptr, off0, ih0, iw0, mask_pc, c, kh, H, W, C, zp, stride_wc,
            stride_wt, K: tl.constexpr, I64: tl.constexpr):
    """acc += Σ_kw (x[ih0 + kh, iw0 + kw, c] − zp)·w[c·stride_wc + (kh·K + kw)·stride_wt] over
    one kernel row kh, in acc's dtype. Out-of-image taps load zp: they contribute exactly 0."""
    ih = ih0 + kh
    row_ok = (ih >= 0) & (ih < H)
    for kw in tl.static_range(K):
        iw = iw0 + kw
        ok = row_ok & (iw >= 0) & (iw < W)
        tap = kh * W + kw
        if I64:
            tap = tl.cast(tap, tl.int64)  # tl.cast: W may be specialised to a constexpr 1
        xv = tl.load(x_base + off0 + tap * C, mask=mask_pc & ok[:, None], other=zp)
        wv = tl.load(w_ptr + c * stride_wc + (kh * K + kw) * stride_wt, mask=c < C, other=0)
        acc += (xv.to(acc.dtype) - zp) * wv.to(acc.dtype)[None, :]
    return acc


@triton.jit
def dw_accumulate(acc, x_ptr, w_ptr, n, ho, wo, c, H, W, C, Ho, Wo, zp, stride_wc, stride_wt,
                  K: tl.constexpr, S: tl.constexpr, PAD_T: tl.constexpr, PAD_L: tl.constexpr,
                  I64: tl.constexpr):
    """acc (BLOCK_H·BLOCK_W, BLOCK_C) += the k×k depthwise taps of sample n at output pixels
    (ho, wo), channels c (see ``_dw_row``; zp = 0.0 for float inputs). Taps unrolled for
    k ≤ UNROLL_K_MAX, kh a runtime loop beyond."""
    mask_pc = ((ho < Ho) & (wo < Wo))[:, None] & (c < C)[None, :]
    ih0 = ho * S - PAD_T  # input tile origin (top-left tap) per output pixel; may be padding
    iw0 = wo * S - PAD_L
    if I64:
        pix0 = tl.cast(ih0, tl.int64) * W + iw0
    else:
        pix0 = ih0 * W + iw0
    off0 = pix0[:, None] * C + c[None, :]
    x_base = x_ptr + n * H * W * C
    if K <= UNROLL_K_MAX:
        for kh in tl.static_range(K):
            acc = _dw_row(acc, x_base, w_ptr, off0, ih0, iw0, mask_pc, c, kh, H, W, C, zp,
                          stride_wc, stride_wt, K, I64)
    else:
        for kh in range(K):
            acc = _dw_row(acc, x_base, w_ptr, off0, ih0, iw0, mask_pc, c, kh, H, W, C, zp,
                          stride_wc, stride_wt, K, I64)
    return acc


@triton.jit
def dw_store(y_ptr, ws_ptr, out, v, n, th, tw, ho, wo, c, C, Ho, Wo, ws_stride_n, inv_hw,
             POOL: tl.constexpr, I64: tl.constexpr, BLOCK_W: tl.constexpr):
    """Store the tile ``out`` (already in y's dtype) at y[n, ho, wo, c], masked; with POOL also
    the float32 tile v's pixel sum, scaled by inv_hw, as this tile's partial ws[n, tile, c]."""
    cmask = c < C
    mask_pc = ((ho < Ho) & (wo < Wo))[:, None] & cmask[None, :]
    if I64:
        opix = tl.cast(ho, tl.int64) * Wo + wo
    else:
        opix = ho * Wo + wo
    y_base = y_ptr + n * Ho * Wo * C
    tl.store(y_base + opix[:, None] * C + c[None, :], out, mask=mask_pc)
    if POOL:
        part = tl.sum(tl.where(mask_pc, v, 0.0), axis=0) * inv_hw
        tile = th * tl.cdiv(Wo, BLOCK_W) + tw
        tl.store(ws_ptr + n * ws_stride_n + tile * C + c, part, mask=cmask)
