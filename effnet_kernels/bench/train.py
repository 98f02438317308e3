"""Training measurements: bytes saved for backward, and timed training steps.

``saved_bytes(model, x)`` counts what autograd keeps for backward during ``model(x)``: the
unique storages seen by ``torch.autograd.graph.saved_tensors_hooks`` (a tensor saved by several
ops, or a view of a saved tensor, counts once), split into parameter storages and the rest
(activations). The issue's 94 MiB/image for an eager B0 at 224² counts both; the activation part
is what grows with the batch.

``train_step_rows(...)`` times full training steps (forward, cross-entropy, backward, SGD step)
of eager PyTorch and of ``ek.optimize_for_training``, interleaved round by round, and reports
img/s, the saved bytes per image and the peak of live tensor bytes during a step
(``peak_live_bytes``: tracked through a dispatch mode that sees every tensor allocation and its
release, on any device; on CUDA ``torch.cuda.max_memory_allocated`` is used instead).
"""

from __future__ import annotations

import statistics
import time
import weakref

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["saved_bytes", "peak_live_bytes", "train_step_rows"]


def saved_bytes(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """{"activations": bytes, "parameters": bytes, "total": bytes} saved for backward by one
    forward of ``model`` on ``x`` (unique storages; the graph is freed before returning)."""
    seen: dict[tuple, int] = {}

    def pack(t):
        st = t.untyped_storage()
        seen[(st.data_ptr(), str(t.device))] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out
    params = {(p.untyped_storage().data_ptr(), str(p.device)) for p in model.parameters()}
    par = sum(n for k, n in seen.items() if k in params)
    act = sum(n for k, n in seen.items() if k not in params)
    return {"activations": act, "parameters": par, "total": act + par}


class _LiveBytes(TorchDispatchMode):
    """Tracks the bytes of live tensor storages created under the mode, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live, self.peak, self._seen = 0, 0, set()

    def _track(self, t) -> None:
        if not isinstance(t, torch.Tensor):
            return
        st = t.untyped_storage()
        key = st.data_ptr()
        if key in self._seen or st.nbytes() == 0:
            return
        self._seen.add(key)
        n = st.nbytes()
        self.live += n
        self.peak = max(self.peak, self.live)
        weakref.finalize(st, self._free, key, n)

    def _free(self, key, n) -> None:
        self._seen.discard(key)
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            self._track(t)
        return out


def peak_live_bytes(step) -> int:
    """Peak bytes of tensors allocated while ``step()`` runs (parameters and inputs that exist
    before it are not counted): the activation / gradient / workspace memory of a step."""
    with _LiveBytes() as mode:
        step()
    return mode.peak


def _step_fn(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
             opt: torch.optim.Optimizer):
    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), target)
        loss.backward()
        opt.step()
    return step


def train_step_rows(model_name: str, batch: int, resolution: int, rounds: int = 5,
                    bn: str = "batch", device: str = "cpu") -> list[dict]:
    """One row per runner ("eager", "ours"): img/s (median over ``rounds`` interleaved steps,
    after a warm-up step), saved MiB per image (activations, and with parameters), peak MiB
    of a step. Both runners train their own copy of the same random-initialised model."""
    import copy

    import effnet_kernels as ek

    torch.manual_seed(0)
    base = ek.create_model(model_name).to(device)
    eager = copy.deepcopy(base).train()
    fused = ek.optimize_for_training(copy.deepcopy(base).train(), bn=bn)
    if bn == "frozen":  # the eager baseline with the same frozen BatchNorm
        for m in eager.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
                m.weight.requires_grad_(False)
                m.bias.requires_grad_(False)
    x = torch.randn(batch, 3, resolution, resolution, device=device)
    target = torch.randint(0, base.num_classes, (batch,), device=device)
    runners = {"eager": eager, "ours": fused}
    steps = {k: _step_fn(m, x, target, torch.optim.SGD([p for p in m.parameters()
                                                         if p.requires_grad], lr=1e-3))
             for k, m in runners.items()}
    times: dict[str, list[float]] = {k: [] for k in runners}
    rows = []
    for k, s in steps.items():
        s()  # warm-up
    for _ in range(rounds):
        for k, s in steps.items():
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            s()
            if device == "cuda":
                torch.cuda.synchronize()
            times[k].append(time.perf_counter() - t0)
    for k, m in runners.items():
        sb = saved_bytes(m, x)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            steps[k]()
            peak = torch.cuda.max_memory_allocated() - before
        else:
            peak = peak_live_bytes(steps[k])
        med = statistics.median(times[k])
        rows.append({"model": model_name, "runner": k, "bn": bn, "batch": batch,
                     "resolution": resolution, "device": device,
                     "img_per_s": batch / med, "ms_per_step": med * 1e3,
                     "saved_mib_per_image": sb["activations"] / batch / 2**20,
                     "saved_mib_per_image_with_params": sb["total"] / batch / 2**20,
                     "peak_mib": peak / 2**20, "rounds_ms": [t * 1e3 for t in times[k]]})
    return rows


TRAIN_DEFAULTS = {"models": ("efficientnet_b0", "efficientnet_lite0"), "batch": (8,)}


def cmd_train_bench(args) -> int:
    """``effnet-kernels bench --train``: training-step rows (eager vs ours) for ``--models`` ×
    ``--batch`` at each model's resolution (or ``--resolution``); ``--rounds`` (default 3);
    ``--json`` writes the rows with the environment."""
    import json
    from pathlib import Path

    from .envinfo import environment, result_filename

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    from ..models.efficientnet import CONFIGS

    models = args.models or list(TRAIN_DEFAULTS["models"])
    batches = args.batch or list(TRAIN_DEFAULTS["batch"])
    doc = {**environment(device), "kind": "train", "threads": torch.get_num_threads(),
           "rows": []}
    print(f"training steps on {doc['device']} ({doc['threads']} threads), commit "
          f"{doc['commit']}: forward + cross-entropy + backward + SGD step")
    print(f"{'model':<20}{'batch':>6}{'res':>5}  {'runner':<7}{'img/s':>8}{'ms/step':>9}"
          f"{'saved MiB/img':>15}{'(+params)':>11}{'peak MiB':>10}")
    for name in models:
        res = args.resolution or CONFIGS[name].resolution
        for b in batches:
            for r in train_step_rows(name, b, res, rounds=args.rounds or 3,
                                     device=device.type):
                doc["rows"].append(r)
                print(f"{name:<20}{b:>6}{res:>5}  {r['runner']:<7}{r['img_per_s']:>8.2f}"
                      f"{r['ms_per_step']:>9.0f}{r['saved_mib_per_image']:>15.1f}"
                      f"{r['saved_mib_per_image_with_params']:>11.1f}{r['peak_mib']:>10.0f}",
                      flush=True)
    if args.json:
        path = Path(args.json)
        if path.is_dir():
            path = path / result_filename(doc).replace(".json", "-train.json")
        path.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {path}")
    return 0
