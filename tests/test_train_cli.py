"""``effnet-kernels train``: a tiny generated ImageFolder (two colour classes), the pretrained
Lite0 start, checkpoint + resume equal to an uninterrupted run, the checkpoint loading into
the zoo model and into predict, two ranks under torchrun, and the input errors."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import effnet_kernels as ek
from effnet_kernels.__main__ import main
from effnet_kernels.train_cli import find_classes

Image = pytest.importorskip("PIL.Image")
ROOT = Path(__file__).resolve().parents[1]


def _lite0_or_skip():
    from effnet_kernels.convert import load_lite0_pretrained

    try:
        load_lite0_pretrained()
    except RuntimeError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """data/red/*.png and data/blue/*.jpg (+ a nested folder), 4 noisy images each."""
    d = tmp_path_factory.mktemp("data")
    g = torch.Generator().manual_seed(0)
    for cls, ch, ext in (("red", 0, ".png"), ("blue", 2, ".jpg")):
        (d / cls / "more").mkdir(parents=True)
        for i in range(4):
            a = (torch.rand(40, 52, 3, generator=g) * 90).to(torch.uint8)
            a[..., ch] += 150
            sub = d / cls / ("more" if i == 3 else "")
            Image.fromarray(a.numpy()).save(sub / f"{i}{ext}")
    (d / "red" / "notes.txt").write_text("not an image, not listed")
    return d


def train(capsys, *args) -> tuple[int, str, str]:
    rc = main(["train", *map(str, args), "--no-progress", "--workers", "0", "--threads", "1"])
    out = capsys.readouterr()
    return rc, out.out, out.err


COMMON = ("--resolution", 48, "--batch-size", 4, "--lr", 0.05)


def test_find_classes(folder):
    classes, items = find_classes(str(folder))
    assert classes == ["blue", "red"]
    assert len(items) == 8 and {c for _, c in items} == {0, 1}
    assert sum(p.endswith(os.path.join("more", "3.png")) for p, _ in items) == 1


def test_train_checkpoint_resume(folder, tmp_path, capsys):
    """Two epochs straight == resuming the first epoch's checkpoint for the second (same
    weights, bit for bit: the augmentation, the shuffle and dropout are seeded per epoch)."""
    _lite0_or_skip()
    straight, split = tmp_path / "straight", tmp_path / "split"
    rc, out, err = train(capsys, folder, "--out", straight, "--epochs", 2, "--val", folder,
                         "--keep-every", 1, *COMMON)
    assert rc == 0, err
    assert "epoch 1/2: loss" in out and "epoch 2/2: loss" in out and "val top-1" in out
    assert (straight / "epoch_1.pt").exists() and (straight / "epoch_2.pt").exists()
    rc, out, err = train(capsys, folder, "--out", split, "--epochs", 2, "--resume",
                         straight / "epoch_1.pt", *COMMON)
    assert rc == 0, err
    assert "epoch 1/2" not in out and "epoch 2/2: loss" in out
    a = torch.load(straight / "last.pt", weights_only=True)
    b = torch.load(split / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2 and a["classes"] == ["blue", "red"]
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    pre = ek.convert.load_lite0_pretrained()
    assert not torch.equal(a["model"]["stem.conv.weight"], pre.stem.conv.weight)  # it trained
    m = ek.create_model("efficientnet_lite0", num_classes=2, padding_mode=a["padding"],
                        bn_eps=a["architecture"]["bn_eps"])
    m.load_state_dict(a["model"])
    # predict rebuilds the checkpoint's model (padding, BN eps) from --weights
    rc = main(["predict", str(folder / "red"), "--out", str(tmp_path / "p.csv"), "--weights",
               str(straight / "last.pt"), "--topk", "1", "--no-progress", "--workers", "0",
               "--resolution", "48"])
    assert rc == 0
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert len(rows) == 4
    from effnet_kernels.convert import imagenet_preprocess
    from effnet_kernels.data import load_image

    path = rows[0].split(",")[0]
    x = imagenet_preprocess(load_image(path).permute(1, 2, 0), 48)
    with torch.no_grad():
        p = torch.softmax(m.eval()(x), -1)[0]
    assert int(rows[0].split(",")[1]) == int(p.argmax())
    assert abs(float(rows[0].split(",")[3]) - float(p.max())) < 1e-4


def test_frozen_bn_bf16_adamw(folder, tmp_path, capsys):
    """--bn frozen (running statistics and BN affine unchanged), --dtype bfloat16, --opt adamw."""
    _lite0_or_skip()
    rc, out, err = train(capsys, folder, "--out", tmp_path, "--epochs", 1, "--bn", "frozen",
                         "--dtype", "bfloat16", "--opt", "adamw", "--lr", 1e-3,
                         "--resolution", 48, "--batch-size", 4)
    assert rc == 0, err
    sd = torch.load(tmp_path / "last.pt", weights_only=True)["model"]
    pre = ek.convert.load_lite0_pretrained().state_dict()
    for k in ("stem.bn.running_mean", "stem.bn.weight", "blocks.3.1.dw.bn.bias"):
        assert torch.equal(sd[k], pre[k]), k
    assert not torch.equal(sd["stem.conv.weight"], pre["stem.conv.weight"])
    assert all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point())


def test_errors(folder, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = train(capsys, empty, "--out", tmp_path / "o")
    assert rc == 2 and "no class sub-folders" in err
    (empty / "cls").mkdir()
    rc, _, err = train(capsys, empty, "--out", tmp_path / "o")
    assert rc == 2 and "no image files" in err
    rc, _, err = train(capsys, folder, "--out", tmp_path / "o", "--model", "efficientnet_b1")
    assert rc == 2 and "--weights" in err
    rc, _, err = train(capsys, folder, "--out", tmp_path / "o", "--epochs", 0)
    assert rc == 2 and "--epochs" in err
    rc, _, err = train(capsys, folder, "--out", tmp_path / "o", "--val", empty)
    assert rc == 2 and "no image files" in err


@pytest.mark.slow
def test_torchrun_two_cpu_ranks(folder, tmp_path):
    _lite0_or_skip()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
           "-m", "effnet_kernels", "train", str(folder), "--out", str(tmp_path / "o"),
           "--epochs", "1", "--workers", "0", "--no-progress", "--device", "cpu",
           *map(str, COMMON)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "epoch 1/1: loss" in r.stdout and "(2 processes)" in r.stdout
    assert torch.load(tmp_path / "o" / "last.pt", weights_only=True)["epoch"] == 1


def test_bench_train(tmp_path, capsys):
    """``bench --train`` rows: eager and ours, img/s, saved MiB per image (ours below half of
    eager's), peak MiB, and the JSON."""
    import json

    rc = main(["bench", "--train", "--models", "lite0", "--batch", "2", "--resolution", "32",
               "--rounds", "1", "--json", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0 and "efficientnet_lite0" in out and "saved MiB/img" in out
    (path,) = tmp_path.glob("*-train.json")
    rows = {r["runner"]: r for r in json.loads(path.read_text())["rows"]}
    assert set(rows) == {"eager", "ours"}
    assert all(r["img_per_s"] > 0 and r["peak_mib"] > 0 for r in rows.values())
    assert rows["ours"]["saved_mib_per_image"] < 0.5 * rows["eager"]["saved_mib_per_image"]
