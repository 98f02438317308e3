"""Driver for compute-sanitizer (memcheck, racecheck) in gpu_check.sh: every launch path of the
CUDA C++ kernels once, on small shapes.

    compute-sanitizer --tool memcheck python benchmarks/gpu/sanitizer_driver.py
    python benchmarks/gpu/sanitizer_driver.py --device cpu     # the same cases on the CPU kernels

Paths (csrc/): ``dwconv_bias_act`` fast (k 3 / 5, C % vec == 0, 16-byte aligned x) and generic
(k 7; C = 37; a storage-offset view), one band per sample (Ho = 1) and several (large H), fp32
and fp16; ``dwconv_int8`` 16-byte (C % 16 == 0), 8-byte (C % 8 == 0) and 1-channel (C = 37, k 7,
a 1-byte offset) paths, an 8-byte offset; ``bias_act`` vector (C % 8 == 0) and scalar (C = 37,
unaligned); ``se_gate``. Each with ``return_pool`` on and off where the op has it. Inputs are
made on the CPU and copied, so few other kernels run under the sanitizer. Each output is
checked loosely against ``effnet_kernels.reference`` (a wrong result is exit status 1; the
sanitizer's own findings are its --error-exitcode). On the CPU (``--device cpu``: the "cpu"
backend, the torch reference for the int8 op, which has no CPU kernel) it checks this script.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this tree's effnet_kernels
from effnet_kernels import ops, reference  # noqa: E402

CL = torch.channels_last


def place(x: torch.Tensor, device: str, offset: int) -> torch.Tensor:
    """x (channels_last) on ``device``, starting ``offset`` elements into its storage."""
    N, C, H, W = x.shape
    base = torch.zeros(offset + x.numel(), dtype=x.dtype, device=device)
    v = base[offset:].view(N, H, W, C).permute(0, 3, 1, 2)
    v.copy_(x.to(device))
    assert v.is_contiguous(memory_format=CL)
    return v


def close(out, ref, tol: float) -> bool:
    out, ref = out.detach().cpu().double(), ref.detach().cpu().double()
    return bool(((out - ref).norm() <= tol * ref.norm().clamp_min(1e-30)).item())


# (N, C, H, W, k, stride, element offset of x): dwconv paths
DW_CASES = [
    (2, 32, 28, 28, 3, 1, 0),   # fast k3, several bands
    (1, 64, 29, 29, 5, 2, 0),   # fast k5 s2, several bands
    (2, 32, 9, 9, 7, 1, 0),     # generic: k 7
    (2, 37, 12, 12, 3, 1, 0),   # generic: C % vec != 0
    (2, 32, 12, 12, 3, 1, 1),   # generic: x not 16-byte aligned
    (4, 64, 1, 1, 3, 1, 0),     # Ho = 1: one band per sample
    (1, 16, 112, 112, 3, 2, 0),  # large H: many bands
]
# int8: C % 16 == 0 (16-byte), C % 8 == 0 (8-byte), C = 37 (1-channel), offsets 8 and 1
Q_CASES = [
    (2, 32, 13, 13, 3, 1, 0),
    (1, 48, 15, 15, 5, 2, 0),
    (2, 24, 11, 11, 3, 1, 0),
    (2, 40, 9, 9, 5, 1, 0),
    (2, 37, 9, 9, 3, 1, 0),
    (1, 32, 9, 9, 7, 1, 0),
    (2, 64, 9, 7, 3, 1, 8),
    (2, 64, 9, 7, 3, 1, 1),
    (4, 32, 1, 1, 3, 1, 0),
    (1, 16, 96, 96, 5, 1, 0),
]
# (N, C, H, W, element offset): bias_act vector / scalar paths
BA_CASES = [(2, 64, 7, 9, 0), (2, 37, 5, 7, 0), (1, 64, 7, 9, 1)]
SE_CASES = [(2, 96, 4), (1, 1152, 48), (3, 37, 5)]


def run(device: str) -> int:
    g = torch.Generator().manual_seed(0)
    be = "cuda" if device == "cuda" else "cpu"
    bad = []

    def check(name, ok):
        if device == "cuda":
            torch.cuda.synchronize()
        print(f"{'ok ' if ok else 'BAD'} {name}", flush=True)
        if not ok:
            bad.append(name)

    for dt, tol in ((torch.float32, 1e-4), (torch.float16, 3e-3)):
        for N, C, H, W, k, s, off in DW_CASES:
            x = torch.randn(N, C, H, W, generator=g).to(dt).contiguous(memory_format=CL)
            w = (torch.randn(C, 1, k, k, generator=g) * 0.2).to(dt)
            b = (torch.randn(C, generator=g) * 0.1).to(dt)
            ref_y, ref_p = reference.dwconv_bias_act(x.double(), w.double(), b.double(), s,
                                                     None, "silu", True)
            xd = place(x, device, off)
            for pool in (True, False):
                out = ops.dwconv_bias_act(xd, w.to(device), b.to(device), s, None, "silu", pool,
                                          backend=be)
                y, p = out if pool else (out, None)
                ok = close(y, ref_y, tol) and (p is None or close(p, ref_p, 1e-4))
                check(f"dwconv_bias_act {dt} N{N} C{C} {H}x{W} k{k} s{s} off{off} pool={pool}",
                      ok)
        for N, C, H, W, off in BA_CASES:
            x = torch.randn(N, C, H, W, generator=g).to(dt).contiguous(memory_format=CL)
            b = torch.randn(C, generator=g).to(dt)
            y = ops.bias_act(place(x, device, off), b.to(device), "silu", backend=be)
            check(f"bias_act {dt} N{N} C{C} {H}x{W} off{off}",
                  close(y, reference.bias_act(x.double(), b.double(), "silu"), tol))
        for N, C, S in SE_CASES:
            p = torch.randn(N, C, generator=g)
            w1, w2 = (torch.randn(S, C, generator=g) * C ** -0.5).to(dt), \
                (torch.randn(C, S, generator=g) * S ** -0.5).to(dt)
            b1, b2 = torch.randn(S, generator=g).to(dt), torch.randn(C, generator=g).to(dt)
            gate = ops.se_gate(*(t.to(device) for t in (p, w1, b1, w2, b2)), backend=be)
            ref = reference.se_gate(*(t.double() for t in (p, w1, b1, w2, b2)))
            check(f"se_gate {dt} N{N} C{C} S{S}", close(gate, ref, 1e-4))
    qbe = "cuda" if device == "cuda" else "torch"  # no CPU kernel of dwconv_int8
    for N, C, H, W, k, s, off in Q_CASES:
        x = torch.randint(-128, 128, (N, C, H, W), generator=g, dtype=torch.int8)
        x = x.contiguous(memory_format=CL)
        w = torch.randint(-127, 128, (C, 1, k, k), generator=g, dtype=torch.int8)
        sc = (torch.rand(C, generator=g) + 0.5) * 3.0 / (k * 74 * 73)
        b = torch.randn(C, generator=g)
        ref_y, ref_p = reference.dwconv_int8(x, w, sc, b, s, (k // 2,) * 4, 3, 20.0, -5, "silu",
                                             True)
        xd = place(x, device, off)
        for pool in (True, False):
            out = ops.dwconv_int8(xd, w.to(device), sc.to(device), b.to(device), s, None, 3,
                                  20.0, -5, "silu", pool, backend=qbe)
            y, p = out if pool else (out, None)
            ok = (y.cpu().int() - ref_y.int()).abs().max().item() <= 1 and (
                p is None or close(p, ref_p, 1e-4))
            check(f"dwconv_int8 N{N} C{C} {H}x{W} k{k} s{s} off{off} pool={pool}", ok)
    print(f"sanitizer_driver: {len(bad)} wrong results" + (f": {bad}" if bad else ""))
    return 1 if bad else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   choices=["cuda", "cpu"])
    return run(p.parse_args(argv).device)


if __name__ == "__main__":
    sys.exit(main())
