"""``effnet-kernels predict``: inputs (files, folders, globs), outputs (.jsonl/.csv/.npy; top-k,
embeddings, features), colour conversions, a broken file skipped, rows independent of the batch
size, INT8, refusals, and two CPU ranks under torchrun writing the single-process output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import effnet_kernels as ek
from effnet_kernels.__main__ import main
from effnet_kernels.predict import find_images

skdata = pytest.importorskip("skimage.data")
Image = pytest.importorskip("PIL.Image")
ROOT = Path(__file__).resolve().parents[1]


def _lite0_or_skip():
    from effnet_kernels.convert import load_lite0_pretrained

    try:
        return load_lite0_pretrained()
    except RuntimeError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """A folder: RGB jpeg, RGB png, and in sub/: CMYK jpeg, grayscale png, RGBA png, a broken
    .jpg; small pictures, for time."""
    d = tmp_path_factory.mktemp("imgs")
    (d / "sub").mkdir()

    def small(a):
        return Image.fromarray(a).resize((a.shape[1] // 2, a.shape[0] // 2))

    small(skdata.chelsea()).save(d / "a_cat.jpg", quality=95)
    small(skdata.rocket()).save(d / "b_rocket.png")
    small(skdata.coffee()).save(d / "sub" / "coffee_rgb.png")
    small(skdata.coffee()).convert("CMYK").save(d / "sub" / "coffee_cmyk.jpg", quality=95)
    small(skdata.camera()).save(d / "sub" / "gray.png")
    small(skdata.astronaut()).convert("RGBA").save(d / "sub" / "rgba.png")
    (d / "sub" / "broken.jpg").write_text("not an image")
    return d


def predict(capsys, *args) -> tuple[int, str, str]:
    rc = main(["predict", *map(str, args), "--no-progress"])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_find_images(images):
    files, missing = find_images([str(images / "sub"), str(images / "*.jpg"),
                                  str(images / "a_cat.jpg"), str(images / "nope.png"),
                                  str(images / "**" / "*.png")])
    names = [os.path.relpath(f, images) for f in files]
    assert names == ["sub/broken.jpg", "sub/coffee_cmyk.jpg", "sub/coffee_rgb.png",
                     "sub/gray.png", "sub/rgba.png", "a_cat.jpg", "b_rocket.png"]
    assert missing == [(str(images / "nope.png"), "no such file or folder")]


def test_topk_jsonl_broken_file_and_colour_conversions(images, tmp_path, capsys):
    _lite0_or_skip()
    out = tmp_path / "p.jsonl"
    rc, so, se = predict(capsys, images, "--out", out, "--batch-size", 4, "--workers", 2)
    assert rc == 0
    assert "skipped" in se and "broken.jpg" in se and "cannot read image" in se
    assert "predict: 6 images" in so and "1 skipped" in so
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    by = {os.path.basename(r["path"]): r["topk"] for r in rows}
    assert list(by) == ["a_cat.jpg", "b_rocket.png", "coffee_cmyk.jpg", "coffee_rgb.png",
                        "gray.png", "rgba.png"]
    assert all(len(t) == 5 and t[0]["prob"] >= t[-1]["prob"] for t in by.values())
    assert by["a_cat.jpg"][0]["label"] in ("Egyptian cat", "tabby", "tiger cat")
    # CMYK converted: the same picture as the RGB one (read as raw CMYK it would not be)
    assert by["coffee_cmyk.jpg"][0]["class"] == by["coffee_rgb.png"][0]["class"]
    from effnet_kernels.data import load_image

    diff = (load_image(str(images / "sub" / "coffee_cmyk.jpg")).float()
            - load_image(str(images / "sub" / "coffee_rgb.png")).float()).abs().mean()
    assert diff < 4, diff


@pytest.mark.parametrize("fmt,extra", [("jsonl", ()), ("csv", ()), ("npy", ("--embeddings",)),
                                       ("csv", ("--embeddings",)),
                                       ("jsonl", ("--features", "--out-indices", "2,4"))])
def test_rows_do_not_depend_on_batch_size(images, tmp_path, capsys, fmt, extra):
    _lite0_or_skip()
    a, b = tmp_path / f"a.{fmt}", tmp_path / f"b.{fmt}"
    assert predict(capsys, images, "--out", a, "--batch-size", 1, "--workers", 0, *extra)[0] == 0
    assert predict(capsys, images, "--out", b, "--batch-size", 3, "--workers", 2, *extra)[0] == 0
    assert a.read_bytes() == b.read_bytes()


def test_embeddings_and_features_values(images, tmp_path, capsys):
    """.npy rows are the fused models' outputs on the model's own preprocessing."""
    from effnet_kernels.convert import imagenet_preprocess
    from effnet_kernels.data import load_image

    m = _lite0_or_skip()
    e, f = tmp_path / "e.npy", tmp_path / "f.npy"
    assert predict(capsys, images / "sub", "--out", e, "--embeddings")[0] == 0
    assert predict(capsys, images / "sub", "--out", f, "--features", "--out-indices", 3)[0] == 0
    paths = (tmp_path / "e.npy.paths.txt").read_text().split()
    assert [os.path.basename(p) for p in paths] == ["coffee_cmyk.jpg", "coffee_rgb.png",
                                                    "gray.png", "rgba.png"]
    x = torch.cat([imagenet_preprocess(load_image(p).permute(1, 2, 0), 224) for p in paths])
    emb, feat = np.load(e), np.load(f)
    assert emb.shape == (4, 1280) and feat.shape == (4, 112, 14, 14)
    with torch.inference_mode():
        want_e = ek.optimize(m, num_classes=0)(x)
        want_f = ek.optimize(m, features_only=True, out_indices=(3,))(x)[0]
    assert np.array_equal(emb, want_e.numpy())
    assert np.array_equal(feat, want_f.numpy())


def test_csv_topk_and_own_weights(images, tmp_path, capsys):
    torch.manual_seed(0)
    w = tmp_path / "b0_10.pt"
    torch.save(ek.create_model("efficientnet_b0", num_classes=10).state_dict(), w)
    out = tmp_path / "p.csv"
    rc, so, _ = predict(capsys, images / "a_cat.jpg", images / "b_rocket.png", "--out", out,
                        "--model", "efficientnet_b0", "--weights", w, "--topk", 3)
    assert rc == 0 and "2 images" in so
    lines = out.read_text().splitlines()
    assert len(lines) == 2
    cells = lines[0].split(",")
    assert cells[0].endswith("a_cat.jpg") and len(cells) == 1 + 3 * 3
    assert all(0 <= int(c) < 10 for c in cells[1::3]) and cells[2] == ""  # no labels
    assert sum(float(p) for p in cells[3::3]) <= 1.0


def test_int8_calibrated_and_saved_state(images, tmp_path, capsys):
    _lite0_or_skip()
    a, b, st = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "q.pt"
    args = ("--batch-size", 2, "--workers", 0)
    assert predict(capsys, images, "--out", a, "--int8", "--calib-images", 3,
                   "--save-int8-state", st, *args)[0] == 0
    assert predict(capsys, images, "--out", b, "--int8-state", st, *args)[0] == 0
    assert a.read_bytes() == b.read_bytes()
    rows = [json.loads(line) for line in a.read_text().splitlines()]
    assert rows[0]["path"].endswith("a_cat.jpg")
    assert rows[0]["topk"][0]["label"] in ("Egyptian cat", "tabby", "tiger cat")


def test_refusals(images, tmp_path, capsys):
    cat = images / "a_cat.jpg"
    rc, _, err = predict(capsys, cat, "--out", tmp_path / "x.txt")
    assert rc == 2 and ".jsonl, .csv, .npy" in err
    rc, _, err = predict(capsys, cat, "--out", tmp_path / "x.npy")
    assert rc == 2 and "--embeddings" in err
    rc, _, err = predict(capsys, cat, "--out", tmp_path / "x.csv", "--model", "efficientnet_b1")
    assert rc == 2 and "--weights" in err
    rc, _, err = predict(capsys, tmp_path / "nothing*.jpg", "--out", tmp_path / "x.csv")
    assert rc == 2 and "no image files" in err
    rc, _, err = predict(capsys, cat, "--out", tmp_path / "x.csv", "--batch-size", 0)
    assert rc == 2 and "--batch-size" in err
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.slow
def test_torchrun_two_cpu_ranks(images, tmp_path, capsys):
    """Two gloo ranks, each on half the files, write one output equal to one process's."""
    _lite0_or_skip()
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    prev = torch.get_num_threads()  # (torchrun runs each rank with OMP_NUM_THREADS=1)
    try:
        assert predict(capsys, images, "--out", one, "--batch-size", 2, "--workers", 0,
                       "--threads", 1)[0] == 0
    finally:
        torch.set_num_threads(prev)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
           "-m", "effnet_kernels", "predict", str(images), "--out", str(two), "--batch-size",
           "2", "--workers", "0", "--no-progress", "--device", "cpu"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "6 images" in r.stdout and "(2 processes)" in r.stdout and "1 skipped" in r.stdout
    assert r.stderr.count("predict: skipped") == 1  # once, by the rank that read it
    assert two.read_bytes() == one.read_bytes()
