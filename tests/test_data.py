"""effnet_kernels.data.load_image (the one image loader) and the one ImageNet normalisation."""

import numpy as np
import pytest
import torch

from effnet_kernels import convert, data

skimage = pytest.importorskip("skimage")


def test_sample_names_and_files_load_the_same(tmp_path):
    a = data.load_image("chelsea")
    assert a.dtype == torch.uint8 and a.shape == (3, 300, 451)
    f = tmp_path / "chelsea.png"
    skimage.io.imsave(f, a.permute(1, 2, 0).numpy(), check_contrast=False)
    assert torch.equal(data.load_image(str(f)), a)


@pytest.mark.parametrize("kind", ["gray", "rgba", "float", "bool", "uint16"])
def test_conversions(tmp_path, monkeypatch, kind):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    img, want = {
        "gray": (base[:, :, 0], np.repeat(base[:, :, :1], 3, axis=2)),
        "rgba": (np.concatenate([base, base[:, :, :1]], axis=2), base),
        "float": (base / 255.0, base),
        "bool": (base > 127, (base > 127).astype(np.uint8) * 255),
        "uint16": (base.astype(np.uint16) * 257, base),
    }[kind]
    np.save(tmp_path / "x.npy", img)  # a file whose decoded array is exactly `img`
    monkeypatch.setattr(skimage.io, "imread", np.load)
    got = data.load_image(str(tmp_path / "x.npy"))
    assert torch.equal(got, torch.from_numpy(want).permute(2, 0, 1))


def test_bad_files_raise_value_error(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    for name in (str(bad), str(tmp_path / "missing.jpg"), "no_such_sample"):
        with pytest.raises(ValueError, match="cannot read image"):
            data.load_image(name)


def test_one_normalisation():
    mean, std = convert.imagenet_mean_std()
    x = data.random_crops(["coffee"], 1, size=32)
    raw = x * std + mean  # crops are normalised with the same constants
    assert raw.min() >= -1e-6 and raw.max() <= 1 + 1e-6
    assert mean.flatten().tolist() == pytest.approx(list(convert.IMAGENET_MEAN))
