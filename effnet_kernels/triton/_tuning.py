"""Autotuning helpers shared by the Triton kernels."""

import triton


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
