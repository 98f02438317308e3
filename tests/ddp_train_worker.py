"""torchrun worker of tests/test_train_ddp.py: one DDP training step of
ek.optimize_for_training(bn="frozen") on this rank's half of a fixed batch; rank 0 saves the
averaged gradients (by parameter name) to argv[1]."""

import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_train_ddp import batch, make_model  # noqa: E402


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    import effnet_kernels as ek

    src = make_model()
    model = DDP(ek.optimize_for_training(src, bn="frozen"))
    x, target = batch()
    per = x.shape[0] // world
    mine = slice(rank * per, (rank + 1) * per)
    F.cross_entropy(model(x[mine]), target[mine]).backward()
    if rank == 0:
        torch.save({n: p.grad for n, p in src.named_parameters() if p.grad is not None}, out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
