"""DDP: two CPU ranks under torchrun (gloo), each on half the batch, give the gradients of one
process on the whole batch (bn="frozen": no batch statistics, so the split does not matter);
with bn="batch" SyncBatchNorm is refused clearly (tests/test_training.py::test_refusals)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import effnet_kernels as ek

ROOT = Path(__file__).resolve().parents[1]


def make_model():
    torch.manual_seed(0)
    return ek.efficientnet_lite0(num_classes=6, dropout=0.0, drop_path_rate=0.0).train()


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 48, 48, generator=g), torch.randint(0, 6, (4,), generator=g)


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process(tmp_path):
    src = make_model()
    x, target = batch()
    F.cross_entropy(ek.optimize_for_training(src, bn="frozen")(x), target).backward()
    out = tmp_path / "grads.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "",
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
           str(ROOT / "tests" / "ddp_train_worker.py"), str(out)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    got = torch.load(out, weights_only=True)
    want = {n: p.grad for n, p in src.named_parameters() if p.grad is not None}
    assert got.keys() == want.keys() and len(want) > 50
    for n, g in want.items():
        torch.testing.assert_close(got[n], g, rtol=1e-4, atol=1e-6 * g.abs().max().item(),
                                   msg=n)
