"""The user's own data, from ``dataset.<d>.path``: a folder of images, tensors in .npz files, or lines of text.

Files are found recursively and sorted, so the same folder gives the same sample order everywhere;
where there are more than ``num_samples``, a seeded draw picks which. Every file is checked when the
dataset is opened (an unreadable image, an .npz missing an input or holding the wrong dtype or shape),
and the error names the file and what was expected, before any stage writes anything.
"""
from __future__ import annotations

import csv
import io
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..config.schema import DatasetConfig, DatasetSource, TensorSpec, option_value
from ..errors import PipelineError
from .datasets import Dataset, Feeds, text_dataset
from .preprocess import output_size, preprocess_image
from .resources import resolve_path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# Decoding and resizing release the GIL (Pillow), so a few threads decode images in parallel.
DECODE_THREADS = 4


def _root(name: str, cfg: DatasetConfig) -> Path:
    if not cfg.path:
        raise PipelineError(f"dataset '{name}' ({option_value(cfg.source)}) needs dataset.{name}.path: the file or folder of your data")
    try:
        return resolve_path(cfg.path)
    except PipelineError as exc:
        raise PipelineError(f"dataset.{name}.path = {cfg.path}: not found") from exc


def _find(root: Path, suffixes: Tuple[str, ...]) -> List[Path]:
    """Files with these suffixes under ``root``, recursively, sorted by relative path; hidden files and
    folders (.ipynb_checkpoints, .DS_Store) left out."""
    found = (p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
             and not any(part.startswith(".") for part in p.relative_to(root).parts))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _draw(name: str, cfg: DatasetConfig, count: int, what: str) -> List[int]:
    """Which of ``count`` samples the dataset holds: all, or a seeded draw of ``num_samples``."""
    if count < 2:
        raise PipelineError(f"dataset '{name}' has {count} {what} in {cfg.path}; it needs at least 2 (calibration and validation draw from them)")
    if cfg.num_samples is None or cfg.num_samples >= count:
        return list(range(count))
    return sorted(int(i) for i in np.random.default_rng([cfg.seed, 2]).choice(count, size=cfg.num_samples, replace=False))


# ---------------------------------------------------------------- images

def _image_labels(name: str, cfg: DatasetConfig, root: Path, files: List[Path]) -> Optional[np.ndarray]:
    if cfg.labels is None:
        return None
    relative = [f.relative_to(root).as_posix() for f in files]
    if cfg.labels == "subfolders":
        classes = sorted({r.split("/")[0] for r in relative if "/" in r})
        loose = [r for r in relative if "/" not in r]
        if loose or not classes:
            raise PipelineError(f"dataset.{name}.labels = subfolders: every image must sit in a class folder under {cfg.path}; "
                                f"{loose[0] if loose else 'no class folders found'}")
        return np.array([classes.index(r.split("/")[0]) for r in relative], dtype=np.int64)
    table = resolve_path(cfg.labels)
    rows: Dict[str, str] = {}
    with open(table, newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if not row or (number == 1 and len(row) == 2 and row[1].strip().lower() in ("label", "class", "target")):
                continue
            if len(row) != 2:
                raise PipelineError(f"{cfg.labels} line {number}: expected 'file,label', got {row}")
            rows[row[0].strip().replace("\\", "/")] = row[1].strip()
    unlabelled = [r for r in relative if r not in rows]
    if unlabelled:
        raise PipelineError(f"{cfg.labels} has no label for {len(unlabelled)} image(s) of {cfg.path}, e.g. '{unlabelled[0]}' "
                            f"(files are named relative to dataset.{name}.path)")
    values = [rows[r] for r in relative]
    if all(v.lstrip("-").isdigit() for v in values):
        return np.array([int(v) for v in values], dtype=np.int64)
    classes = sorted(set(values))  # class names: sorted, their index is the class id
    return np.array([classes.index(v) for v in values], dtype=np.int64)


def _image_folder(name: str, cfg: DatasetConfig, inputs: Sequence[TensorSpec]) -> Dataset:
    from PIL import Image, UnidentifiedImageError

    root = _root(name, cfg)
    if not root.is_dir():
        raise PipelineError(f"dataset.{name}.path = {cfg.path} is a file; image_folder reads a folder of {', '.join(IMAGE_SUFFIXES)} images")
    found = _find(root, IMAGE_SUFFIXES)
    labels = _image_labels(name, cfg, root, found)
    chosen = _draw(name, cfg, len(found), "images")
    files = [found[i] for i in chosen]
    labels = labels[chosen] if labels is not None else None
    pre = cfg.preprocess
    free_axes = -1 in pre.size

    def header(path: Path) -> Tuple[int, int]:
        try:
            with Image.open(path) as image:
                return image.height, image.width
        except (UnidentifiedImageError, OSError) as exc:
            raise PipelineError(f"{path}: not a readable image ({exc}); dataset '{name}' reads {', '.join(IMAGE_SUFFIXES)}") from exc

    # Every file's header when the dataset opens (cheap: no pixels decoded), so a file that is no image is
    # named before any stage writes; where an axis follows the image, its size decides its batch.
    sizes = [output_size(pre, *header(f)) for f in files]

    def decode(index: int) -> np.ndarray:
        path = files[index]
        try:
            with Image.open(path) as image:
                image.load()
                return preprocess_image(image, pre)
        except (OSError, SyntaxError, ValueError) as exc:  # a truncated or corrupt file fails at decode
            raise PipelineError(f"{path}: cannot decode ({exc}); remove or replace it in dataset.{name}.path") from exc

    def load(indices: List[int], _pad: bool) -> Feeds:
        with ThreadPoolExecutor(min(DECODE_THREADS, len(indices))) as pool:
            return {cfg.input_name: np.stack(list(pool.map(decode, indices)))}

    return Dataset(
        name=name,
        ids=[f"{name}/{f.relative_to(root).as_posix()}" for f in files],
        loader=load,
        sample_bytes=lambda i: files[i].read_bytes(),
        labels=labels,
        shape_of=(lambda i: pre.sample_shape(*sizes[i])) if free_axes else None,
    )


# ---------------------------------------------------------------- tensors

def _read_npz(path: Path) -> Dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {key: stored[key] for key in stored.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise PipelineError(f"{path}: not a readable .npz file ({exc})") from exc


def _check_arrays(arrays: Dict[str, np.ndarray], specs: Sequence[TensorSpec], label_key: Optional[str], shown: str, per_sample: bool) -> None:
    """Names, dtypes and shapes of one .npz against the model's inputs (batched inputs carry the
    samples on axis 0 in a whole-set file; a one-sample file may leave that axis out)."""
    wanted = {spec.name for spec in specs}
    missing = sorted(wanted - set(arrays))
    extra = sorted(set(arrays) - wanted - {label_key})
    if missing or extra:
        raise PipelineError(f"{shown} holds arrays {sorted(arrays)}; the model's inputs are {sorted(wanted)}"
                            + (f" (missing {missing})" if missing else "") + (f" (not inputs: {extra}; an array of class labels is named by labels)" if extra else "")
                            + (f"; labels: '{label_key}'" if label_key else ""))
    for spec in specs:
        value = arrays[spec.name]
        if value.dtype != np.dtype(spec.dtype):
            raise PipelineError(f"{shown}: array '{spec.name}' is {value.dtype}; the model's input '{spec.name}' is {spec.dtype} (store it as {spec.dtype})")
        shape = list(spec.shape)
        expected = shape if not spec.batch else (shape[1:] if per_sample and value.ndim == len(shape) - 1 else [-1] + shape[1:])
        if value.ndim != len(expected) or any(e >= 0 and e != h for e, h in zip(expected, value.shape)):
            layout = "as stored (no batch axis)" if not spec.batch else ("one sample" if per_sample else "samples on axis 0")
            raise PipelineError(f"{shown}: array '{spec.name}' has shape {list(value.shape)}; the model's input is {shape}, "
                                f"so the file must hold {expected} ({layout}; -1 = any size)")
        if spec.batch and per_sample and value.ndim == len(shape) and value.shape[0] != 1:
            raise PipelineError(f"{shown}: array '{spec.name}' holds {value.shape[0]} samples; a file in a folder holds one "
                                f"(put many samples in one .npz instead)")


def _tensor_files(name: str, cfg: DatasetConfig, inputs: Sequence[TensorSpec]) -> Dataset:
    if not inputs:
        raise PipelineError(f"dataset '{name}' (tensor_files) is read against the model's inputs; none were given")
    root = _root(name, cfg)
    batched = [spec for spec in inputs if spec.batch]
    if root.is_file():
        arrays = _read_npz(root)
        _check_arrays(arrays, inputs, cfg.labels, str(root), per_sample=False)
        counts = {spec.name: len(arrays[spec.name]) for spec in batched}
        if cfg.labels and cfg.labels in arrays:
            counts[cfg.labels] = len(arrays[cfg.labels])
        if len(set(counts.values())) > 1:
            raise PipelineError(f"{root}: arrays hold different sample counts {counts}; axis 0 of every batched input is the sample")
        if cfg.labels and cfg.labels not in arrays:
            raise PipelineError(f"{root} has no labels array '{cfg.labels}' (dataset.{name}.labels); it holds {sorted(arrays)}")
        chosen = _draw(name, cfg, next(iter(counts.values())) if counts else 0, "samples")

        def load_whole(indices: List[int], _pad: bool) -> Feeds:
            rows = [chosen[i] for i in indices]
            return {spec.name: arrays[spec.name][rows] if spec.batch else arrays[spec.name] for spec in inputs}

        def sample_bytes_whole(i: int) -> bytes:
            return b"".join(arrays[spec.name][chosen[i]].tobytes() for spec in batched)

        labels = np.asarray(arrays[cfg.labels])[chosen].astype(np.int64) if cfg.labels else None
        return Dataset(name=name, ids=[f"{name}/{root.name}:{i}" for i in chosen], loader=load_whole,
                       sample_bytes=sample_bytes_whole, labels=labels)

    found = _find(root, (".npz",))
    chosen = _draw(name, cfg, len(found), ".npz files")
    files = [found[i] for i in chosen]
    shapes, labels = [], []
    for path in files:  # every file checked up front: the error names the file, before anything is written
        arrays = _read_npz(path)
        _check_arrays(arrays, inputs, cfg.labels, str(path), per_sample=True)
        if cfg.labels:
            if cfg.labels not in arrays:
                raise PipelineError(f"{path} has no labels array '{cfg.labels}' (dataset.{name}.labels); it holds {sorted(arrays)}")
            labels.append(int(np.asarray(arrays[cfg.labels]).reshape(-1)[0]))
        shapes.append(tuple((spec.name, tuple(arrays[spec.name].shape)) for spec in inputs))

    def with_batch_axis(spec: TensorSpec, value: np.ndarray) -> np.ndarray:
        return value if value.ndim == len(spec.shape) else value[None]

    def load_files(indices: List[int], _pad: bool) -> Feeds:
        samples = [_read_npz(files[i]) for i in indices]
        feeds = {spec.name: np.concatenate([with_batch_axis(spec, s[spec.name]) for s in samples]) for spec in batched}
        for spec in inputs:
            if not spec.batch:  # no batch axis: such models run one sample at a time, with its own value
                feeds[spec.name] = samples[0][spec.name]
        return feeds

    return Dataset(name=name, ids=[f"{name}/{f.relative_to(root).as_posix()}" for f in files], loader=load_files,
                   sample_bytes=lambda i: files[i].read_bytes(), labels=np.array(labels, dtype=np.int64) if cfg.labels else None,
                   shape_of=(lambda i: shapes[i]) if len(set(shapes)) > 1 else None)


# ---------------------------------------------------------------- text

def _text_lines(name: str, cfg: DatasetConfig, inputs: Sequence[TensorSpec]) -> Dataset:
    root = _root(name, cfg)
    if root.is_dir():
        raise PipelineError(f"dataset.{name}.path = {cfg.path} is a folder; text_lines reads one UTF-8 file, one sample per line")
    raw = root.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PipelineError(f"{root} line {line} is not UTF-8 ({exc.reason}); text_lines reads UTF-8 text") from exc
    numbered = [(number, line.strip()) for number, line in enumerate(io.StringIO(text), start=1) if line.strip()]
    chosen = _draw(name, cfg, len(numbered), "non-empty lines")
    lines = [numbered[i] for i in chosen]
    return text_dataset(name, cfg, [line for _, line in lines], [f"{name}/{root.name}:{number}" for number, _ in lines], inputs)


def load_user_dataset(name: str, cfg: DatasetConfig, inputs: Sequence[TensorSpec]) -> Dataset:
    readers = {DatasetSource.image_folder: _image_folder, DatasetSource.tensor_files: _tensor_files, DatasetSource.text_lines: _text_lines}
    return readers[cfg.source](name, cfg, inputs)
