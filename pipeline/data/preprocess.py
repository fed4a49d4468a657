"""Image preprocessing: a decoded picture -> one model input sample, as the config's ``preprocess``
block says (colour order, resize mode, scale, per-channel mean/std, layout, dtype).

The built-in ``photo_crops`` and the user's ``image_folder`` both go through :func:`preprocess_image`,
so one code path is exercised by every run.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from ..config.schema import ColorOrder, Layout, Preprocess, ResizeMode


def output_size(pre: Preprocess, height: int, width: int) -> Tuple[int, int]:
    """The [H, W] an image of ``height`` x ``width`` becomes: the configured size, where an axis left
    -1 follows the image (scaled with the fixed axis, if any, to keep the aspect ratio) and is rounded
    to ``multiple_of``."""
    want_h, want_w = pre.size
    if want_h > 0 and want_w > 0:
        return want_h, want_w

    def rounded(value: float) -> int:
        return max(pre.multiple_of, int(round(value / pre.multiple_of)) * pre.multiple_of)

    if want_h > 0:  # e.g. a text recognizer: height 48, width follows the line's length
        return want_h, rounded(width * want_h / height)
    if want_w > 0:
        return rounded(height * want_w / width), want_w
    return rounded(height), rounded(width)


def _resize(image, pre: Preprocess, size: Tuple[int, int]):
    """``image`` (PIL, already in the colour mode) to ``size`` = (H, W) by the configured mode."""
    from PIL import Image

    height, width = size
    if (image.height, image.width) == (height, width):
        return image
    if pre.resize == ResizeMode.stretch:
        return image.resize((width, height), Image.BILINEAR)
    if pre.resize == ResizeMode.center_crop:  # scale so the image covers the size, crop the centre
        scale = max(height / image.height, width / image.width)
        scaled = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))), Image.BILINEAR)
        left, top = (scaled.width - width) // 2, (scaled.height - height) // 2
        return scaled.crop((left, top, left + width, top + height))
    # letterbox: fit inside, centred, the rest padded
    scale = min(height / image.height, width / image.width)
    new_w, new_h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    fill = int(round(pre.pad_value))
    canvas = Image.new(image.mode, (width, height), fill if image.mode == "L" else (fill, fill, fill))
    canvas.paste(image.resize((new_w, new_h), Image.BILINEAR), ((width - new_w) // 2, (height - new_h) // 2))
    return canvas


def preprocess_image(image, pre: Preprocess) -> np.ndarray:
    """A PIL image -> one sample: colour, resize, * scale, - mean, / std, layout, dtype."""
    image = image.convert("L" if pre.color == ColorOrder.gray else "RGB")
    image = _resize(image, pre, output_size(pre, image.height, image.width))
    pixels = np.asarray(image, dtype=np.float32)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pre.color == ColorOrder.bgr:
        pixels = pixels[:, :, ::-1]
    pixels = pixels * np.float32(pre.scale)
    if pre.mean:
        pixels = pixels - np.asarray(pre.mean, dtype=np.float32)
    if pre.std:
        pixels = pixels / np.asarray(pre.std, dtype=np.float32)
    if pre.layout == Layout.nchw:
        pixels = pixels.transpose(2, 0, 1)
    return np.ascontiguousarray(pixels.astype(np.dtype(pre.dtype)))

