"""Hydra composition: every option composes, bad input fails with a message naming what's allowed."""
from __future__ import annotations

import pytest
import yaml

from pipeline.config import CONF_DIR, compose_yaml
from pipeline.config.schema import BenchmarkConfig, CalibrationConfig
from pipeline.errors import PipelineError

from .conftest import REPO, compose_config

TARGETS = sorted(p.stem for p in (CONF_DIR / "target").glob("*.yaml"))


def test_committed_params_yaml_matches_conf():
    assert (REPO / "params.yaml").read_text() == compose_yaml(), "params.yaml is stale: run `make params`"


def test_default_matrix_is_two_models_on_cpu_at_fp32_and_int8(tmp_path):
    cfg = compose_config(tmp_path)
    assert len(cfg.model) >= 2
    assert sorted(cfg.builds) == sorted(f"{m}-cpu-{p}" for m in cfg.model for p in ("fp32", "int8"))
    for name, entry in cfg.builds.items():
        assert name == f"{entry.model}-{entry.target}-{entry.precision.value}"
        assert entry.dataset == cfg.model[entry.model].dataset


@pytest.mark.parametrize("target", TARGETS)
def test_every_target_composes_with_each_precision_it_supports(tmp_path, target):
    cfg = compose_config(tmp_path, f"target=[{target}]", "precision=[fp32]")
    allowed = [p.value for p in cfg.target[target].precisions]
    cfg = compose_config(tmp_path, f"target=[{target}]", f"precision=[{','.join(allowed)}]")
    assert {e.precision.value for e in cfg.builds.values()} == set(allowed)
    assert {e.target for e in cfg.builds.values()} == {target}
    written = yaml.safe_load((CONF_DIR / "target" / f"{target}.yaml").read_text())
    assert cfg.target[target].backend.value == written["backend"] and allowed == written["precisions"]
    assert cfg.target[target].quantization.format.value == written.get("quantization", {}).get("format", "ort_u8s8")


def _options(group):
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _option_file(group: str, option: str) -> dict:
    return yaml.safe_load((CONF_DIR / group / f"{option}.yaml").read_text())


@pytest.mark.parametrize("model", _options("model"))
def test_every_model_option_lands_in_the_matrix(tmp_path, model):
    cfg = compose_config(tmp_path, f"model=[{model}]")
    written = _option_file("model", model)
    assert set(cfg.model) == {model} and {e.model for e in cfg.builds.values()} == {model}
    assert cfg.model[model].source.value == written["source"] and cfg.model[model].dataset == written["dataset"]
    assert [i.name for i in cfg.model[model].inputs] == [i["name"] for i in written["inputs"]]


@pytest.mark.parametrize("option", _options("calibration"))
def test_every_calibration_option_sets_its_method(tmp_path, option):
    cfg = compose_config(tmp_path, f"calibration={option}")
    written = _option_file("calibration", option)
    assert cfg.calibration.method.value == written["method"] == option
    # What the option does not set is the schema's default (docs/settings.md).
    assert cfg.calibration.num_samples == written.get("num_samples", CalibrationConfig().num_samples) == 500


@pytest.mark.parametrize("option", _options("benchmark"))
def test_every_benchmark_option_sets_its_sweep(tmp_path, option):
    cfg = compose_config(tmp_path, f"benchmark={option}")
    written = _option_file("benchmark", option) or {}
    defaults = BenchmarkConfig()
    assert cfg.benchmark.batch_sizes == written.get("batch_sizes", defaults.batch_sizes)
    assert cfg.benchmark.iterations == written.get("iterations", defaults.iterations)
    assert cfg.benchmark.gpu.batch_sizes == written.get("gpu", {}).get("batch_sizes", defaults.gpu.batch_sizes)


@pytest.mark.parametrize("precision", _options("precision"))
def test_every_precision_option_makes_builds_of_that_precision(tmp_path, precision):
    cfg = compose_config(tmp_path, f"precision=[{precision}]", "target=[h100]")
    assert {e.precision.value for e in cfg.builds.values()} == {precision}
    assert cfg.precision[precision].mode.value == _option_file("precision", precision)["mode"]


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["precision=[fp16]"], "target 'cpu' cannot run precision ['fp16']; it supports ['fp32', 'int8']"),
        (["target=[a100]", "precision=[fp8]"], "target 'a100' cannot run precision ['fp8']; it supports ['fp32', 'fp16', 'bf16', 'int8']"),
        (["model=[nosuch]"], "unknown model option 'nosuch'; available model options: digits_cnn, minilm, onnx_file, resnet18"),
        (["target=[tpu]"], "available target options: a100, cpu, cpu_amx, cpu_avx2, cpu_vnni, h100, h200, h200_aoti, h200_ort, jetson_orin, l4, rtx4090"),
        (["calibration=magic"], "available calibration options: entropy, minmax, percentile"),
        (["model.digits_cnn.opset=seventeen"], "could not be converted to Integer"),
        (["target.cpu.backend=tvm"], "expected one of [onnxruntime, tensorrt, tensorrt_rtx, openvino, aoti]"),
        (["+model.digits_cnn.typo_key=1"], "Key 'typo_key' not in 'ModelConfig'"),
        (["dataset=[digits]"], "model 'resnet18' uses dataset 'photo_crops', which is not selected"),
        (["model.digits_cnn.int8_activations=per_token"], "expected one of [static, dynamic]"),
        (["model.digits_cnn.smoothquant.alpha=1.5"], "model.digits_cnn.smoothquant.alpha = 1.5: null (off) or strictly between 0 and 1"),
        (["model.digits_cnn.transformer_fusions.model_type=bertish"], "model.digits_cnn.transformer_fusions.model_type = 'bertish': one of ONNX Runtime's"),
        (["model.digits_cnn.transformer_fusions.num_heads=5", "model.digits_cnn.transformer_fusions.hidden_size=384"],
         "hidden_size a multiple of num_heads"),
        (["target=[rtx4090]", "target.rtx4090.quantization.min_layer_speedup=1.02"],
         "target.rtx4090.quantization.min_layer_speedup = 1.02: null, or > 0 on ONNX Runtime CPU targets"),
        (["model=[digits_cnn]", "benchmark.speed_gate_waived=[digits_cnn-cpu-fp16]"],
         "benchmark.speed_gate_waived names ['digits_cnn-cpu-fp16'], which are not builds of this matrix; its builds: ['digits_cnn-cpu-fp32'"),
    ],
)
def test_bad_config_fails_at_compose_time_naming_what_is_allowed(tmp_path, overrides, expected):
    with pytest.raises(PipelineError) as info:
        compose_config(tmp_path, *overrides)
    assert expected in str(info.value)


def test_unknown_key_in_a_config_file_is_rejected(tmp_path):
    conf = tmp_path / "conf"
    import shutil

    shutil.copytree(CONF_DIR, conf)
    path = conf / "target" / "cpu.yaml"
    path.write_text(path.read_text() + "warp_speed: 9\n")
    with pytest.raises(PipelineError, match="Key 'warp_speed' not in 'TargetConfig'"):
        compose_yaml(config_dir=conf)


def test_params_yaml_with_wrong_type_is_rejected_by_stages(tmp_path):
    from pipeline.config import load_params

    params = yaml.safe_load(compose_yaml())
    params["calibration"]["num_samples"] = "many"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(PipelineError, match="calibration.num_samples"):
        load_params(path)
    with pytest.raises(PipelineError, match="make params"):
        load_params(tmp_path / "missing.yaml")


def test_check_command_detects_drift(tmp_path):
    import subprocess
    import sys

    stale = tmp_path / "params.yaml"
    stale.write_text(compose_yaml().replace("num_samples: 500", "num_samples: 400"))
    result = subprocess.run([sys.executable, "-m", "pipeline", "check", "--params", str(stale)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert "out of date with conf/" in result.stderr and "num_samples: 500" in result.stderr


def test_dvc_yaml_core_modules_are_generated_and_their_drift_is_caught(tmp_path):
    """Every stage's deps end with pipeline/dvc_file.py's core modules: check fails on a stage missing one
    (a stage would not rerun when that module changes), compose writes them back."""
    import subprocess
    import sys

    from pipeline.dvc_file import CORE_MODULES, with_core_modules

    committed = (REPO / "dvc.yaml").read_text()
    assert with_core_modules(committed) == committed
    (tmp_path / "params.yaml").write_text(compose_yaml())
    dropped = committed.replace(f"        - {CORE_MODULES[3]}\n", "", 1)
    assert dropped != committed
    (tmp_path / "dvc.yaml").write_text(dropped)
    check = subprocess.run([sys.executable, "-m", "pipeline", "check", "--params", str(tmp_path / "params.yaml")], cwd=REPO,
                           capture_output=True, text=True)
    assert check.returncode == 2 and "do not end with the core modules of pipeline/dvc_file.py" in check.stderr, check.stderr
    compose = subprocess.run([sys.executable, "-m", "pipeline", "compose", "--output", str(tmp_path / "params.yaml")], cwd=REPO,
                             capture_output=True, text=True)
    assert compose.returncode == 0, compose.stderr
    assert (tmp_path / "dvc.yaml").read_text() == committed


def test_docs_settings_md_is_generated_from_the_schema():
    from pipeline.report.settings import render

    text = render()
    undescribed = [line for line in text.splitlines() if line.startswith("| `") and line.endswith("|  |")]
    assert not undescribed, f"settings without a description (schema.setting(help=...)): {undescribed}"
    assert (REPO / "docs" / "settings.md").read_text() == text, "docs/settings.md is stale: python -m pipeline.report.settings"


def test_docs_targets_md_is_generated_from_conf():
    from pipeline.report.targets import render

    assert (REPO / "docs" / "targets.md").read_text() == render(CONF_DIR), "run `python -m pipeline.report.targets`"


@pytest.mark.parametrize(
    "override, expected",
    [
        ("calibration.batch_size=0", "calibration.batch_size = 0: must be >= 1"),
        ("calibration.batch_size=-4", "calibration.batch_size = -4: must be >= 1"),
        ("calibration.num_samples=0", "calibration.num_samples = 0: must be >= 1"),
        ("calibration.percentile=150", "calibration.percentile = 150.0: must be in (0, 100]"),
        ("calibration.num_bins=0", "calibration.num_bins = 0: must be >= 128"),
        ("calibration.search.max_excluded=-1", "calibration.search.max_excluded = -1: must be >= 0"),
        ("benchmark.batch_sizes=[0]", "benchmark.batch_sizes = [0]: must be a non-empty list of sizes >= 1"),
        ("benchmark.batch_sizes=[]", "benchmark.batch_sizes = []: must be a non-empty list"),
        ("benchmark.iterations=0", "benchmark.iterations = 0: must be >= 1"),
        ("benchmark.repeats=0", "benchmark.repeats = 0: must be >= 1"),
        ("target.cpu.selection.min_gain=0.5", "target.cpu.selection.min_gain = 0.5: must be >= 1 (1: the fastest always wins)"),
        ("calibration.search.num_samples=0", "calibration.search.num_samples = 0: must be null or >= 1 (null: as many as the validation split)"),
        ("serving.http_max_request_mb=5000", "serving.http_max_request_mb = 5000.0: must be in (0, 4096]"),
        ("benchmark.gpu.figures=[graph,eager,graph]", "benchmark.gpu.figures = ['graph', 'eager', 'graph']: a non-empty list without repeats of "
         "['graph', 'eager', 'overlapped', 'serial']"),
        ("benchmark.gpu.figures=[fastest]", "expected one of [graph, eager, overlapped, serial]"),
        ("benchmark.gpu.max_seconds=1", "benchmark.gpu.max_seconds = 1.0: must be > 0 and >= benchmark.gpu.min_seconds (2.0)"),
        ("benchmark.gpu.batch_sizes=[1,0]", "benchmark.gpu.batch_sizes = [1, 0]: must be a non-empty list of sizes >= 1"),
        ("model.digits_cnn.gates.min_cosine=2", "model.digits_cnn.gates.min_cosine = 2.0: must be null or in [-1.0, 1.0]"),
        ("model.digits_cnn.profiles=[{min:{batch:8},opt:{batch:4},max:{batch:32}}]", "model.digits_cnn.profiles[0].batch = [8, 4, 32]"),
        ("target.cpu.build.graph_optimization_level=turbo", "expected one of [disabled, basic, extended, all]"),
        ("precision.int8.dtype=float16", "precision.int8.dtype = 'float16': precision mode qdq converts to ['float8e4m3fn', 'int8']"),
        ("+calibration.mode=implicit", "Key 'mode' not in 'CalibrationConfig'"),
        ("model=[digits_cnn,../target/cpu]", "model option '../target/cpu' in 'model=[digits_cnn,../target/cpu]' is not an option name"),
        # Serving gates and searches that cannot be met or measured.
        ("model.digits_cnn.inputs=[{name: input, shape: [4, 1, 8, 8], dtype: float32}]",
         "model.digits_cnn.inputs[0].shape = [4, 1, 8, 8]: axis 0 is the batch: -1 (dynamic) or 1"),
        ("serving.p99_budget_ms=0", "serving.p99_budget_ms = 0.0: must be > 0"),
        ("serving.agreement_samples=600", "serving.agreement_samples = 600: at most dataset.digits.num_validation=497"),
        ("serving.batching_search.preferred_batch_sizes=[[64]]", "serving.batching_search.preferred_batch_sizes = [[64]]: a non-empty list of lists ([] allowed) "
         "of sizes in [1, serving.max_batch_size=32]"),
        ("serving.batching_search.concurrency=[]", "serving.batching_search.concurrency = []: a non-empty list of levels >= 1"),
    ],
)
def test_out_of_range_values_fail_at_compose_time(tmp_path, override, expected):
    with pytest.raises(PipelineError) as info:
        compose_config(tmp_path, "model=[digits_cnn]", "dataset=[digits]", override)
    assert expected in str(info.value)


def test_string_settings_are_enums_checked_at_compose_time(tmp_path):
    with pytest.raises(PipelineError, match=r"expected one of \[none, layer_names_only, detailed\]"):
        compose_config(tmp_path, "target=[h100]", "target.h100.build.profiling_verbosity=loud")
    with pytest.raises(PipelineError, match=r"expected one of \[none, ampere_plus, same_compute_capability\]"):
        compose_config(tmp_path, "target=[h100]", "target.h100.build.hardware_compatibility=any")


def test_output_folders_outside_the_project_are_refused(tmp_path):
    from pipeline.config import write_params

    with pytest.raises(PipelineError, match=r"output folders must be inside the project .*artifacts_dir = '\.\./elsewhere'"):
        write_params(tmp_path / "project" / "params.yaml", ["artifacts_dir=../elsewhere"])
    with pytest.raises(PipelineError, match="metrics_dir = '/tmp'"):
        write_params(tmp_path / "project" / "params.yaml", ["metrics_dir=/tmp"])
    assert not (tmp_path / "project" / "params.yaml").exists()


def test_a_hand_edited_params_yaml_is_range_checked_by_stages(tmp_path):
    from pipeline.config import load_params

    params = yaml.safe_load(compose_yaml())
    params["benchmark"]["repeats"] = 0
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(PipelineError, match="benchmark.repeats = 0: must be >= 1"):
        load_params(path)


def test_a_gate_the_dataset_cannot_measure_is_refused_at_compose_time(tmp_path):
    """Accuracy needs labels: photo crops have none, so an accuracy gate there could never be met."""
    with pytest.raises(PipelineError, match=r"model.onnx_file.gates.max_accuracy_drop = 1.0: dataset 'photo_crops' \(photo_crops\) has no "
                                            r"labels to measure accuracy on; set it to null and gate on min_top1_agreement / min_cosine"):
        compose_config(tmp_path, "model=[onnx_file]", "model.onnx_file.dataset=photo_crops", "dataset=[photo_crops]")
    cfg = compose_config(tmp_path, "model=[onnx_file]", "model.onnx_file.dataset=photo_crops", "dataset=[photo_crops]",
                         "model.onnx_file.gates.max_accuracy_drop=null")
    assert cfg.model["onnx_file"].gates.min_top1_agreement == 0.98


def test_the_default_options_of_the_single_groups_agree_with_the_schema_defaults(tmp_path):
    """calibration, benchmark and serving are one dataclass each: the option config.yaml selects by default
    and the schema's defaults must say the same, so a reader of either learns what runs."""
    import dataclasses

    from pipeline.config.schema import BenchmarkConfig, CalibrationConfig, ServingConfig

    from pipeline.config import load_params, write_params

    write_params(tmp_path / "params.yaml", [])
    cfg = load_params(tmp_path / "params.yaml")
    drift = []
    for group, schema in (("calibration", CalibrationConfig), ("benchmark", BenchmarkConfig), ("serving", ServingConfig)):
        composed, default = dataclasses.asdict(getattr(cfg, group)), dataclasses.asdict(schema())
        drift += [f"{group}.{key}: conf {composed[key]!r}, schema {default[key]!r}" for key in default if composed[key] != default[key]]
    assert not drift, drift


def test_every_ranged_setting_says_what_it_is_and_its_default_is_in_range():
    """Each default sits beside its range and description (schema.setting): none without a description,
    none whose own default its range refuses, and config_problems finds every field that has one."""
    import dataclasses

    from pipeline.config import schema
    from pipeline.config.checks import bound_problems

    ranged = []
    for cls in [c for c in vars(schema).values() if dataclasses.is_dataclass(c) and isinstance(c, type)]:
        for spec in dataclasses.fields(cls):
            if "bound" in spec.metadata:
                ranged.append(f"{cls.__name__}.{spec.name}")
                assert spec.metadata["help"], f"{cls.__name__}.{spec.name} has a range but no description"
                assert spec.metadata["bound"].allows(spec.default), f"{cls.__name__}.{spec.name}'s default {spec.default!r} is out of its range"
    assert len(ranged) >= 40, ranged
    broken = dataclasses.replace(schema.ServingConfig(), instances=0, server_scenario=schema.ServerScenario(probes=0))
    assert bound_problems(broken, "serving") == ["serving.instances = 0: must be >= 1",
                                                 "serving.server_scenario.probes = 0: must be >= 1"]
