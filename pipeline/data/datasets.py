"""Real datasets that need no download.

* ``sklearn_digits``: the UCI handwritten digits scikit-learn ships (1,797 labelled 8x8 images).
* ``photo_crops``: seeded crops of the photographs scikit-image ships, generated on demand, so a
  1,000-sample 224 px set never sits in memory whole.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, List, Optional, Sequence

import numpy as np

from ..config.schema import DatasetConfig, DatasetSource
from ..errors import PipelineError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)

# Photographs bundled inside scikit-image's wheel (skimage/data), in a fixed order.
PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png",
    "coffee.png", "coins.png", "color.png", "grass.png", "gravel.png", "horse.png",
    "hubble_deep_field.jpg", "ihc.png", "microaneurysms.png", "moon.png", "motorcycle_left.png",
    "motorcycle_right.png", "page.png", "retina.jpg", "rocket.jpg", "text.png",
)


@dataclass
class Dataset:
    """Samples addressed by index; ``load`` returns model-ready float32 arrays."""

    name: str
    ids: List[str]
    loader: Callable[[Sequence[int]], np.ndarray]
    labels: Optional[np.ndarray] = None  # None: no task labels (agreement metrics only)

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, indices: Sequence[int]) -> np.ndarray:
        return self.loader(list(indices))

    def batches(self, indices: Sequence[int], batch_size: int):
        indices = list(indices)
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            yield chunk, self.load(chunk)


def _digits(name: str, cfg: DatasetConfig) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]  # (N, 1, 8, 8) in [0, 1]
    if cfg.num_samples > len(images):
        raise PipelineError(f"dataset '{name}': num_samples={cfg.num_samples} but scikit-learn's digits has {len(images)}")
    images = images[: cfg.num_samples]
    return Dataset(
        name=name,
        ids=[f"digits/{i}" for i in range(len(images))],
        loader=lambda idx: images[idx],
        labels=bunch.target[: cfg.num_samples].astype(np.int64),
    )


@lru_cache(maxsize=None)
def _photo(photo: str) -> np.ndarray:
    """One bundled photograph as float32 RGB in [0, 1], shape (H, W, 3)."""
    from importlib.resources import files

    from PIL import Image

    path = files("skimage") / "data" / photo
    if not path.is_file():
        raise PipelineError(f"photo_crops needs scikit-image's bundled photo {photo}; not found at {path}")
    with Image.open(str(path)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def _photo_crop(seed: int, index: int, size: int) -> tuple[str, np.ndarray]:
    """Crop ``index``: a seeded photo, square window (20-100% of the short side), flip, resize."""
    from PIL import Image

    rng = np.random.default_rng([seed, index])
    photo = PHOTOS[int(rng.integers(len(PHOTOS)))]
    image = _photo(photo)
    height, width = image.shape[:2]
    side = int(min(height, width) * rng.uniform(0.2, 1.0))
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    crop = image[top : top + side, left : left + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    pil = Image.fromarray((crop * 255).round().astype(np.uint8)).resize((size, size), Image.BILINEAR)
    chw = np.asarray(pil, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return photo, (chw - IMAGENET_MEAN) / IMAGENET_STD


def _photo_crops(name: str, cfg: DatasetConfig) -> Dataset:
    ids = [f"photo_crops/{i}:{_photo_crop_name(cfg.seed, i)}" for i in range(cfg.num_samples)]

    def load(indices: List[int]) -> np.ndarray:
        return np.stack([_photo_crop(cfg.seed, i, cfg.image_size)[1] for i in indices]).astype(np.float32)

    return Dataset(name=name, ids=ids, loader=load, labels=None)


def _photo_crop_name(seed: int, index: int) -> str:
    return PHOTOS[int(np.random.default_rng([seed, index]).integers(len(PHOTOS)))]


_SOURCES = {DatasetSource.sklearn_digits: _digits, DatasetSource.photo_crops: _photo_crops}


def load_dataset(name: str, cfg: DatasetConfig) -> Dataset:
    return _SOURCES[cfg.source](name, cfg)
