"""Triton implementation of ``se_gate``: the SE excite, both tiny FCs in one kernel.

Formula (float32 math whatever the weight dtype)::

    h[n, s]    = silu(b1[s] + Σ_c pooled[n, c] · w1[s, c])          s < S
    gate[n, c] = sigmoid(b2[c] + Σ_s h[n, s] · w2[c, s])             c < C

Layout: pooled (N, C) float32 and the weights w1 (S, C), w2 (C, S) are read in place through
their strides (a non-contiguous pooled or a reshaped 1×1-conv weight costs no copy); b1 (S,),
b2 (C,); gate (N, C) float32 contiguous. The four weight tensors share one dtype
(fp32/fp16/bf16) and are widened to float32 on load.

Tiling: one program per group of BLOCK_B samples (grid axis 0 = cdiv(N, BLOCK_B)), so each
program streams the weights once for its BLOCK_B samples. The hidden vector h (BLOCK_B ×
BLOCK_S, BLOCK_S = next power of two ≥ S, S ≤ ~160 in EfficientNet) stays in registers between
the two FCs. FC1 walks C in chunks of BLOCK_C: a (BLOCK_B, BLOCK_C) slice of pooled times a
(BLOCK_C, BLOCK_S) slice of w1ᵀ, reduced over the chunk (broadcast-multiply + tl.sum: exact
float32 FMAs, no tl.dot minimum of 16 rows, so BLOCK_B = 1 is allowed). FC2 walks C again: a
(BLOCK_C, BLOCK_S) slice of w2 against h gives BLOCK_C gates per sample, stored at once. Masks
cover the S, C and batch tails (any odd C, S). On GPUs (BLOCK_B, BLOCK_C, num_warps) are
autotuned, keyed on (C, S, batch bucket), over the configs whose BLOCK_B·BLOCK_C·BLOCK_S
product stays within a register budget (_prune_configs); under TRITON_INTERPRET=1 there is one
small config. Sample offsets are int64.

Bytes moved: N·C·4 (pooled) + N·C·4 (gate) + (2·C·S + C + S)·itemsize weights per program
(cdiv(N, BLOCK_B) programs, re-reads hit L2). FLOPs: 4·N·C·S. The per-program weight stream
bounds the latency: fine for B0–B4 SE widths (C·S ≤ ~0.2 M), but at B7's widest SE (C = 3840,
S = 160, 1.2 M weights) one SM streams 2.4 MB (fp16) — splitting C across programs (a second
pass or recomputing FC1) would be the next step if that SE shows up in profiles.

Status: tested only under the Triton interpreter on the CPU (TRITON_INTERPRET=1), not yet on a
GPU; every GPU config compiles for sm_90a with Triton 3.6 and 3.8 through ptxas
(benchmarks/triton_aot.py); at S = 160 in fp32 the 1×64 config (BLOCK_S 256) spills. The GPU
configs below are untuned guesses.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import ConfigSet, on_input_device

_REG_BUDGET = 16384  # max BLOCK_B·BLOCK_C·BLOCK_S float32 products live per chunk


def _gpu_configs():
    # (BLOCK_B, BLOCK_C, num_warps): from one sample with wide chunks (batch 1, small S) to 16
    # samples with narrow chunks (batch 256).
    return [
        triton.Config({"BLOCK_B": b, "BLOCK_C": c}, num_warps=w)
        for b, c, w in [
            (1, 32, 4), (1, 64, 4), (1, 128, 8), (2, 16, 4), (2, 32, 4), (2, 64, 8),
            (4, 8, 4), (4, 16, 4), (4, 32, 8), (8, 8, 4), (8, 16, 8), (16, 8, 8),
        ]
    ]


CONFIGS = ConfigSet(
    gpu=tuple(_gpu_configs()),
    fixed=triton.Config({"BLOCK_B": 2, "BLOCK_C": 16}, num_warps=4),
    interp=triton.Config({"BLOCK_B": 2, "BLOCK_C": 16}),
)


def _prune_configs(configs, nargs, **kwargs):
    """Keep configs with BLOCK_B within the batch, BLOCK_C within C (both rounded up to a power
    of two) and BLOCK_B·BLOCK_C·BLOCK_S within the register budget; if none is left, those with
    the smallest per-chunk product."""
    N, C, S = nargs["N"], nargs["C"], nargs["S"]
    bs = triton.next_power_of_2(max(S, 1))

    def size(c):
        return c.kwargs["BLOCK_B"] * c.kwargs["BLOCK_C"] * bs

    kept = [c for c in configs
            if c.kwargs["BLOCK_B"] <= triton.next_power_of_2(max(N, 1))
            and c.kwargs["BLOCK_C"] <= max(8, triton.next_power_of_2(max(C, 1)))
            and size(c) <= _REG_BUDGET]
    if kept:
        return kept
    least = min(size(c) for c in configs)
    return [c for c in configs if size(c) == least]


@triton.autotune(configs=CONFIGS.configs(), key=["C", "S", "N_BUCKET"],
                 prune_configs_by={"early_config_prune": _prune_configs})
@triton.jit
def _se_gate_kernel(p_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, g_ptr, N, C, S,
                    stride_pn, stride_pc, stride_w1s, stride_w1c, stride_w2c, stride_w2s,
                    N_BUCKET, BLOCK_S: tl.constexpr, BLOCK_B: tl.constexpr,
                    BLOCK_C: tl.constexpr):
    bi = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    bmask = bi < N
    s = tl.arange(0, BLOCK_S)
    smask = s < S
    cc = tl.arange(0, BLOCK_C)

    # FC1: h = silu(pooled @ w1ᵀ + b1), (BLOCK_B, BLOCK_S) float32
    acc = tl.zeros((BLOCK_B, BLOCK_S), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + cc
        cmask = c < C
        p = tl.load(p_ptr + bi[:, None] * stride_pn + c[None, :] * stride_pc,
                    mask=bmask[:, None] & cmask[None, :], other=0.0)
        w = tl.load(w1_ptr + s[None, :] * stride_w1s + c[:, None] * stride_w1c,
                    mask=cmask[:, None] & smask[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(p[:, :, None] * w[None, :, :], axis=1)
    b1 = tl.load(b1_ptr + s, mask=smask, other=0.0).to(tl.float32)
    h = acc + b1[None, :]
    h = h * tl.sigmoid(h)  # padded s: silu(0) = 0, and their w2 columns load as 0 anyway

    # FC2: gate = sigmoid(h @ w2ᵀ + b2), BLOCK_C gates per sample at a time
    for c0 in range(0, C, BLOCK_C):
        c = c0 + cc
        cmask = c < C
        w = tl.load(w2_ptr + c[:, None] * stride_w2c + s[None, :] * stride_w2s,
                    mask=cmask[:, None] & smask[None, :], other=0.0).to(tl.float32)
        z = tl.sum(h[:, None, :] * w[None, :, :], axis=2)
        b2 = tl.load(b2_ptr + c, mask=cmask, other=0.0).to(tl.float32)
        gate = tl.sigmoid(z + b2[None, :])
        tl.store(g_ptr + bi[:, None] * C + c[None, :], gate,
                 mask=bmask[:, None] & cmask[None, :])


@on_input_device
def _launch(pooled, w1, b1, w2, b2, config=None):
    """Shared body of the launcher; ``config`` (BLOCK_B, BLOCK_C, optionally num_warps) bypasses
    the autotuner (tests run every GPU config through the interpreter)."""
    N, C = pooled.shape
    S = w1.shape[0]
    gate = torch.empty((N, C), device=pooled.device, dtype=torch.float32)
    if gate.numel() == 0:
        return gate

    def grid(meta):
        return (triton.cdiv(N, meta["BLOCK_B"]),)

    args = (pooled, w1, b1.contiguous(), w2, b2.contiguous(), gate, N, C, S,
            pooled.stride(0), pooled.stride(1), w1.stride(0), w1.stride(1),
            w2.stride(0), w2.stride(1), min(triton.next_power_of_2(N), 256))
    block_s = triton.next_power_of_2(max(S, 1))
    if config is None:
        _se_gate_kernel[grid](*args, BLOCK_S=block_s)
    else:
        _se_gate_kernel.fn[grid](*args, BLOCK_S=block_s, **config)
    return gate


def se_gate(pooled: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
            b2: torch.Tensor) -> torch.Tensor:
    """Launcher: arguments already validated by effnet_kernels.ops (w1 (S, C) and w2 (C, S)
    2-D). Returns the (N, C) float32 gate."""
    return _launch(pooled, w1, b1, w2, b2)
