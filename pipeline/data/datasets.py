"""Real datasets: built in (no download) or the user's own files.

Built in:
* ``sklearn_digits``: the UCI handwritten digits scikit-learn ships (1,797 labelled 8x8 images).
* ``photo_crops``: seeded crops of the photographs scikit-image ships, generated on demand, so a
  1,000-sample 224 px set never sits in memory whole.
* ``stdlib_sentences``: English sentences from the docstrings of Python's standard library (real
  human-written text, derived deterministically), tokenized with the model's own tokenizer.

The user's own (``path``; pipeline/data/user_data.py): ``image_folder``, ``tensor_files``, ``text_lines``.

A dataset yields *feeds*: ``{input name: batch array}``, so multi-input models need no special case.
Samples whose shapes differ (images kept at their own width, tensors with a free axis) are batched
only with samples of the same shape.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, Hashable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..config.schema import DatasetConfig, DatasetSource, Preprocess, TensorSpec
from ..errors import PipelineError
from ..files import sha256_bytes
from .preprocess import preprocess_image
from .resources import resolve_path

# Photographs bundled inside scikit-image's wheel (skimage/data), in a fixed order.
PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png",
    "coffee.png", "coins.png", "color.png", "grass.png", "gravel.png", "horse.png",
    "hubble_deep_field.jpg", "ihc.png", "microaneurysms.png", "moon.png", "motorcycle_left.png",
    "motorcycle_right.png", "page.png", "retina.jpg", "rocket.jpg", "text.png",
)

Feeds = Dict[str, np.ndarray]


@dataclass
class Dataset:
    """Samples addressed by index. ``load`` returns model-ready feeds for a list of indices."""

    name: str
    ids: List[str]
    loader: Callable[[List[int], bool], Feeds]  # (indices, pad_to_max_length) -> feeds
    sample_bytes: Callable[[int], bytes]  # one sample's content, for manifests and overlap checks
    labels: Optional[np.ndarray] = None  # None: no task labels (agreement metrics only)
    # A sample's input shapes, where samples differ (None: all alike): batches never mix two shapes.
    shape_of: Optional[Callable[[int], Hashable]] = None
    _hashes: Dict[int, str] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    def sample_hash(self, index: int) -> str:
        """sha256 of one sample's content, computed once (overlap checks and manifests share it)."""
        if index not in self._hashes:
            self._hashes[index] = sha256_bytes(self.sample_bytes(index))
        return self._hashes[index]

    def load(self, indices: Sequence[int], pad_to_max_length: bool = False) -> Feeds:
        return self.loader(list(indices), pad_to_max_length)

    def fixed_batch(self, indices: Sequence[int], batch_size: int) -> Feeds:
        """Exactly ``batch_size`` samples, cycling through ``indices`` (those shaped like the first);
        text padded to max_length, so timing runs see fixed shapes (e.g. batch x 128 tokens)."""
        if self.shape_of is not None:
            first = self.shape_of(indices[0])
            indices = [i for i in indices if self.shape_of(i) == first]
        return self.load([indices[i % len(indices)] for i in range(batch_size)], pad_to_max_length=True)

    def batches(self, indices: Sequence[int], batch_size: int) -> Iterator[Tuple[List[int], Feeds]]:
        """Chunks of at most ``batch_size`` in order; where sample shapes differ, each chunk holds one
        shape (samples of a shape in their order, shapes in order of first appearance)."""
        groups: Dict[Hashable, List[int]] = {}
        for index in indices:
            groups.setdefault(self.shape_of(index) if self.shape_of else None, []).append(index)
        for group in groups.values():
            for start in range(0, len(group), batch_size):
                chunk = group[start : start + batch_size]
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
        loader=lambda idx, _pad: {cfg.input_name: images[idx]},
        sample_bytes=lambda i: images[i].tobytes(),
        labels=bunch.target[: cfg.num_samples].astype(np.int64),
    )


@lru_cache(maxsize=None)
def _photo(photo: str) -> np.ndarray:
    """One bundled photograph as uint8 RGB, shape (H, W, 3)."""
    from importlib.resources import files

    from PIL import Image

    path = files("skimage") / "data" / photo
    if not path.is_file():
        raise PipelineError(f"photo_crops needs scikit-image's bundled photo {photo}; not found at {path}")
    with Image.open(str(path)) as image:
        return np.asarray(image.convert("RGB"))


def _photo_crop(seed: int, index: int, pre: Preprocess) -> np.ndarray:
    """Crop ``index``: a seeded photo, square window (20-100% of the short side), flip, preprocess."""
    from PIL import Image

    rng = np.random.default_rng([seed, index])
    image = _photo(PHOTOS[int(rng.integers(len(PHOTOS)))])
    height, width = image.shape[:2]
    side = int(min(height, width) * rng.uniform(0.2, 1.0))
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    crop = image[top : top + side, left : left + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return preprocess_image(Image.fromarray(np.ascontiguousarray(crop)), pre)


def _photo_crop_name(seed: int, index: int) -> str:
    return PHOTOS[int(np.random.default_rng([seed, index]).integers(len(PHOTOS)))]


def _photo_crops(name: str, cfg: DatasetConfig) -> Dataset:
    def load(indices: List[int], _pad: bool) -> Feeds:
        return {cfg.input_name: np.stack([_photo_crop(cfg.seed, i, cfg.preprocess) for i in indices])}

    return Dataset(
        name=name,
        ids=[f"photo_crops/{i}:{_photo_crop_name(cfg.seed, i)}" for i in range(cfg.num_samples)],
        loader=load,
        sample_bytes=lambda i: _photo_crop(cfg.seed, i, cfg.preprocess).tobytes(),
    )


# Standard-library modules (pure Python: their source is read) whose docstrings supply the sentences.
_TEXT_MODULES = (
    "argparse", "asyncio", "bisect", "calendar", "codecs", "collections", "concurrent.futures", "configparser",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "email.message", "enum",
    "fractions", "ftplib", "functools", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html.parser",
    "http.client", "http.cookiejar", "imaplib", "inspect", "io", "ipaddress", "json", "logging",
    "mailbox", "mimetypes", "multiprocessing.pool", "numbers", "optparse", "os", "pathlib", "pickle", "pickletools",
    "platform", "poplib", "pprint", "pydoc", "queue", "random", "re", "sched", "selectors", "shelve", "shlex",
    "shutil", "smtplib", "socket", "socketserver", "sqlite3", "ssl", "statistics", "string", "subprocess",
    "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize", "trace", "traceback", "turtle",
    "typing", "unittest.case", "urllib.parse", "urllib.request", "uuid", "warnings", "wave", "weakref",
    "xml.dom.minidom", "xml.etree.ElementTree", "zipfile",
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_CODE_LIKE = re.compile(r">>>|[{}\[\]=<>|\\`@#$]|::|\(\)|\w\.\w+\(|--|\*\*")


def _docstrings(source: str) -> Iterator[str]:
    """Docstrings of a module and its public classes, functions and methods, in source order."""
    import ast

    tree = ast.parse(source)
    yield ast.get_docstring(tree) or ""
    for node in ast.walk(tree):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            yield ast.get_docstring(node) or ""


@lru_cache(maxsize=None)
def stdlib_sentences(min_words: int = 6, max_words: int = 40) -> Tuple[str, ...]:
    """Unique prose sentences from standard-library docstrings, sorted: a real, offline corpus.

    Read from the source files, never imported: a module that cannot import on this machine (turtle
    without tkinter) must not change the corpus, so the dataset depends on the Python version only."""
    import sysconfig

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    found = set()
    for module_name in _TEXT_MODULES:
        base = stdlib.joinpath(*module_name.split("."))
        path = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
        if not path.is_file():
            raise PipelineError(f"standard-library source {path} is missing: the sentences dataset reads {len(_TEXT_MODULES)} stdlib modules' docstrings")
        for doc in _docstrings(path.read_text(encoding="utf-8")):
            for sentence in _SENTENCE_END.split(" ".join(doc.split())):
                words = sentence.split()
                if min_words <= len(words) <= max_words and sentence[0].isupper() and sentence.endswith(".") and not _CODE_LIKE.search(sentence):
                    found.add(sentence)
    return tuple(sorted(found))


def text_dataset(name: str, cfg: DatasetConfig, texts: Sequence[str], ids: List[str], inputs: Sequence[TensorSpec] = ()) -> Dataset:
    """Texts tokenized with ``cfg.tokenizer``: the tokenizer's outputs the model takes (all of them
    when the model's inputs are not given), in the model's integer types."""
    from transformers import AutoTokenizer

    if not cfg.tokenizer:
        raise PipelineError(f"dataset '{name}' is text: set dataset.{name}.tokenizer to the model's tokenizer (a folder or pkg://package/subdir)")
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_path(cfg.tokenizer)))
    dtypes = {spec.name: spec.dtype for spec in inputs}
    given = set(tokenizer.model_input_names)
    missing = sorted(set(dtypes) - given)
    if missing:
        raise PipelineError(f"dataset '{name}': the tokenizer {cfg.tokenizer} gives {sorted(given)}, not the model's inputs {missing}")

    def load(indices: List[int], pad_to_max_length: bool) -> Feeds:
        encoded = tokenizer(
            [texts[i] for i in indices], padding="max_length" if pad_to_max_length else "longest",
            truncation=True, max_length=cfg.max_length, return_tensors="np",
        )
        return {key: np.asarray(value, dtype=dtypes.get(key, "int64")) for key, value in encoded.items() if not dtypes or key in dtypes}

    return Dataset(name=name, ids=ids, loader=load, sample_bytes=lambda i: texts[i].encode("utf-8"))


def _sentences(name: str, cfg: DatasetConfig, inputs: Sequence[TensorSpec]) -> Dataset:
    sentences = stdlib_sentences()
    if len(sentences) < cfg.num_samples:
        raise PipelineError(f"dataset '{name}': asked for {cfg.num_samples} sentences, the standard library gives {len(sentences)}")
    sentences = sentences[: cfg.num_samples]
    return text_dataset(name, cfg, sentences, [f"sentences/{i}" for i in range(len(sentences))], inputs)


def load_dataset(name: str, cfg: DatasetConfig, inputs: Sequence[TensorSpec] = ()) -> Dataset:
    """The dataset ``cfg`` describes. ``inputs``, the model's input specs, lets the user's tensor and
    text files be checked against (and cast to) what the model declares."""
    from . import user_data

    if cfg.source == DatasetSource.sklearn_digits:
        return _digits(name, cfg)
    if cfg.source == DatasetSource.photo_crops:
        return _photo_crops(name, cfg)
    if cfg.source == DatasetSource.stdlib_sentences:
        return _sentences(name, cfg, inputs)
    return user_data.load_user_dataset(name, cfg, inputs)
