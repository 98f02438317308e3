"""Real images without a network: random crops of scikit-image's sample images, preprocessed for
ImageNet models. Used for INT8 calibration / evaluation (``benchmarks/int8_accuracy.py``, the
quant tests) and the demo. Needs ``scikit-image`` (imported lazily).

The images are split in two disjoint sets so that calibration and evaluation never see the same
picture: :data:`CALIBRATION_IMAGES` and :data:`HELD_OUT_IMAGES`. Grayscale images are repeated
to three channels, alpha is dropped, CMYK (and other non-RGB colour spaces) converted.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .convert import imagenet_mean_std

__all__ = ["CALIBRATION_IMAGES", "HELD_OUT_IMAGES", "load_image", "random_crops",
           "bn_stats_from_random_data", "as_uint8_image"]

CALIBRATION_IMAGES = ("astronaut", "coffee", "rocket", "hubble_deep_field",
                      "immunohistochemistry", "camera", "coins", "brick", "grass")
HELD_OUT_IMAGES = ("chelsea", "motorcycle_left", "retina", "logo", "moon", "gravel", "clock",
                   "page")


def load_image(name: str) -> torch.Tensor:
    """An RGB image as a uint8 (3, H, W) tensor: a scikit-image sample name (e.g. "chelsea",
    "motorcycle_left") or an image file path. Grayscale is replicated to 3 channels, alpha is
    dropped, CMYK / YCbCr / LAB / HSV files are converted to RGB; float images are taken as
    [0, 1] (clipped, ×255, rounded), bool as {0, 255}, wider integers scaled from their type's
    range. Raises ValueError for an unknown name or a file
    that is not an image."""
    import numpy as np

    try:
        import skimage.data
        import skimage.io
    except ImportError as e:
        raise ValueError("loading images needs scikit-image: pip install scikit-image") from e
    if name == "motorcycle_left":
        img = skimage.data.stereo_motorcycle()[0]
    elif not any(c in name for c in "/.\\") and hasattr(skimage.data, name):
        img = getattr(skimage.data, name)()
    else:
        try:
            img = _read_colour_converted(name)
            if img is None:
                img = skimage.io.imread(name)
        except (OSError, ValueError, SyntaxError) as e:  # missing, unreadable or not an image
            raise ValueError(f"cannot read image {name!r}: {e}") from e
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[-1] == 2:  # gray + alpha
        img = img[:, :, 0]
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[-1] not in (3, 4):
        raise ValueError(f"{name}: expected an RGB image, got an array of shape {img.shape}")
    img = img[:, :, :3]
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    elif img.dtype.kind == "f":
        img = np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    elif img.dtype != np.uint8:
        info = np.iinfo(img.dtype)
        img = np.round((img.astype(np.float64) - max(info.min, 0)) * 255.0
                       / (info.max - max(info.min, 0))).clip(0, 255).astype(np.uint8)
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).contiguous()


def _read_colour_converted(path: str):
    """The RGB array of an image file stored in a non-RGB colour space (CMYK, YCbCr, LAB, HSV:
    decoded as-is, their channels would pass for RGB(A)), converted by Pillow; None for every
    other file (or without Pillow)."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        return None
    import numpy as np

    try:
        with Image.open(path) as im:  # reads the header only
            if im.mode not in ("CMYK", "YCbCr", "LAB", "HSV"):
                return None
            return np.array(im.convert("RGB"))  # a writable copy
    except (UnidentifiedImageError, FileNotFoundError, IsADirectoryError):
        return None  # the decoder below says why


def random_crops(names, per_image: int, size: int = 224, seed: int = 0,
                 scale: tuple[float, float] = (0.08, 1.0)) -> torch.Tensor:
    """``per_image`` random-resized crops (area fraction ``scale``, aspect 3/4–4/3, bilinear
    antialiased resize to size×size, ImageNet normalisation) of each image in ``names``:
    float32 (len(names)·per_image, 3, size, size), deterministic for a seed."""
    g = torch.Generator().manual_seed(seed)
    mean, std = imagenet_mean_std(torch.float32)
    out = []
    for name in names:
        img = load_image(name).float().div_(255.0)
        _, H, W = img.shape
        for _ in range(per_image):
            for _attempt in range(20):
                area = H * W * float(torch.empty(1).uniform_(*scale, generator=g))
                logr = float(torch.empty(1).uniform_(math.log(3 / 4), math.log(4 / 3),
                                                     generator=g))
                ar = math.exp(logr)
                w = int(round(math.sqrt(area * ar)))
                h = int(round(math.sqrt(area / ar)))
                if 0 < w <= W and 0 < h <= H:
                    break
            else:
                h = w = min(H, W)
            top = int(torch.randint(0, H - h + 1, (1,), generator=g))
            left = int(torch.randint(0, W - w + 1, (1,), generator=g))
            crop = img[None, :, top:top + h, left:left + w]
            out.append(F.interpolate(crop, size=(size, size), mode="bilinear",
                                     align_corners=False, antialias=True))
    x = torch.cat(out) if out else torch.empty(0, 3, size, size)
    return ((x - mean) / std).contiguous()


def as_uint8_image(x: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised crops as they would be if stored as 8-bit images: de-normalise,
    clamp to [0, 1], round to a multiple of 1/255, normalise again. The yardstick for int8
    error: how far the float model's logits move when only its input is 8-bit."""
    mean, std = imagenet_mean_std(x.dtype)
    raw = (x * std + mean).clamp_(0.0, 1.0)
    return ((torch.round(raw * 255.0) / 255.0 - mean) / std).contiguous()


def bn_stats_from_random_data(model: torch.nn.Module, resolution: int, batches: int = 3,
                              batch_size: int = 4, seed: int = 0) -> torch.nn.Module:
    """Give a randomly initialised model BN running statistics measured on N(0, 1) inputs, in
    place, and return it in eval mode. A random init's default statistics (mean 0, var 1) make
    the activations shrink layer by layer until they vanish, which makes quantisation (or any
    numerics) tests on such a model meaningless."""
    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.momentum = None  # a cumulative average over the batches
            mod.reset_running_stats()
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(batch_size, 3, resolution, resolution, generator=g))
    return model.eval()
