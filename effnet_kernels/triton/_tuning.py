"""Autotuning and launch helpers shared by the Triton kernels."""

import contextlib
import functools

import torch
import triton


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
