"""Bring-your-own ONNX: make a file from another exporter fit the pipeline, or refuse it with one
clear error naming the user's file.

Handles what older exporters leave behind, in the order that works: the opset is upgraded first
(while weights are still graph inputs, as IR 3 requires), then the weights leave the inputs and the
IR version rises to what the opset needs; a fixed batch dimension is made dynamic when the config
asks (Reshape targets with the batch written in are rewritten to copy it), else refused; names,
ranks and types are checked against the config; and before anything later relies on it, a batch of
real dataset samples is run through the result.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference, version_converter

from ..config.schema import ModelConfig, option_value
from ..errors import PipelineError
from ..similarity import class_axis_problem
from ..files import atomic_path
from .inspect import SOURCE_NODES_KEY, load_model, onnx_elem_type, real_inputs

# Op domains ONNX Runtime runs without a plugin (com.microsoft: its contrib ops, e.g. from its optimizer).
STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft"}


def _dims(value: onnx.ValueInfoProto) -> list:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]


def _constant_tensors(model: onnx.ModelProto):
    """(name, tensor) of every weight and Constant node value, subgraphs included."""
    def walk(graph: onnx.GraphProto):
        for init in graph.initializer:
            yield init.name, init
        for node in graph.node:
            for attribute in node.attribute:
                if node.op_type == "Constant" and attribute.name == "value":
                    yield node.output[0], attribute.t
                subgraphs = ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs)
                for sub in subgraphs:  # If / Loop / Scan bodies
                    yield from walk(sub)

    yield from walk(model.graph)


_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)


def infinite_constants(model: onnx.ModelProto) -> Dict[str, str]:
    """Constants holding +-inf (a legitimate start value of a Max, a mask) -> the first node that reads them."""
    readers = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, node.name or node.op_type)
    found = {}
    for name, tensor in _constant_tensors(model):
        if tensor.data_type in _FLOATS and tensor.data_location != onnx.TensorProto.EXTERNAL:
            values = numpy_helper.to_array(tensor)
            if np.isinf(values).any():
                found[name] = readers.get(name, "?")
    return found


def _check_contents(model: onnx.ModelProto, shown: str) -> None:
    """Ops outside the standard domains and NaN weights: refused before any conversion (+-inf is
    allowed: the FP32 outputs on real samples must then be finite, checked at calibrate)."""
    custom = sorted({(n.domain, n.op_type, n.name) for n in model.graph.node if n.domain not in STANDARD_DOMAINS})
    if custom:
        domain, op, node = custom[0]
        raise PipelineError(f"{shown} uses {domain}:{op} (node '{node}'{f' and {len(custom) - 1} more' if len(custom) > 1 else ''}), "
                            f"an op outside the ONNX standard that ONNX Runtime and TensorRT cannot run without its plugin; "
                            f"allowed op domains: ai.onnx, ai.onnx.ml, com.microsoft")
    for name, tensor in _constant_tensors(model):
        if tensor.data_type in _FLOATS and tensor.data_location != onnx.TensorProto.EXTERNAL:
            values = numpy_helper.to_array(tensor)
            bad = int(np.isnan(values).sum())
            if bad:
                raise PipelineError(f"{shown}: weight '{name}' holds {bad} NaN value(s) of {values.size}; "
                                    f"no precision can calibrate or run it: re-export the model from finite weights")


def _upgrade(model: onnx.ModelProto, target_opset: int, shown: str) -> tuple:
    """Opset first (the converter needs IR 3's weights-as-inputs intact), then weights out of the
    inputs and the IR version the new opset requires."""
    changes: dict = {}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < target_opset:
        try:
            model = version_converter.convert_version(model, target_opset)
        except Exception as exc:  # the converter raises plain RuntimeErrors naming the op
            raise PipelineError(f"cannot upgrade {shown} from opset {opset} to {target_opset} (per-channel Q/DQ needs >= 13): "
                                f"{str(exc).strip().splitlines()[0]}") from exc
        changes["opset"] = [opset, target_opset]
    initializer_names = {i.name for i in model.graph.initializer}
    weights_as_inputs = [i for i in model.graph.input if i.name in initializer_names]
    if weights_as_inputs:
        kept = [i for i in model.graph.input if i.name not in initializer_names]
        del model.graph.input[:]
        model.graph.input.extend(kept)
        changes["initializers_removed_from_inputs"] = len(weights_as_inputs)
    required_ir = max(4, onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True))
    if model.ir_version < required_ir:  # IR < 4 requires every weight among the inputs
        changes["ir_version"] = [model.ir_version, required_ir]
        model.ir_version = required_ir
    return model, changes


def _check_interface(model: onnx.ModelProto, cfg: ModelConfig, model_name: str, shown: str) -> None:
    inputs = {i.name: i for i in real_inputs(model)}
    declared = {spec.name: spec for spec in cfg.inputs}
    if set(inputs) != set(declared):
        raise PipelineError(f"{shown} has inputs {sorted(inputs)}; model.{model_name}.inputs declares {sorted(declared)}: "
                            f"set model.{model_name}.inputs to the file's input names (e.g. \"model.{model_name}.inputs="
                            f"[{{name: {sorted(inputs)[0]}, shape: [...], dtype: float32}}]\")")
    outputs = [o.name for o in model.graph.output]
    if set(outputs) != set(cfg.outputs):
        raise PipelineError(f"{shown} has outputs {outputs}; model.{model_name}.outputs declares {list(cfg.outputs)}: "
                            f"set model.{model_name}.outputs={outputs}")
    for name, value in inputs.items():
        spec, dims = declared[name], _dims(value)
        if len(dims) != len(spec.shape):
            raise PipelineError(f"input '{name}' of {shown} has rank {len(dims)} ({dims}); model.{model_name}.inputs declares {spec.shape}")
        if value.type.tensor_type.elem_type != onnx_elem_type(spec.dtype):
            raise PipelineError(f"input '{name}' of {shown} is {onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type)}; "
                                f"model.{model_name}.inputs declares {spec.dtype}")
        for axis, (have, want) in enumerate(zip(dims, spec.shape)):
            if want >= 0 and have >= 0 and have != want:
                raise PipelineError(f"input '{name}' axis {axis} is {have} in {shown}; model.{model_name}.inputs declares {want}")


def _fixed_batch(model: onnx.ModelProto, cfg: ModelConfig, model_name: str, shown: str) -> Optional[int]:
    """The batch the file fixes on inputs the config declares dynamic (None: nothing to change)."""
    declared = {spec.name: spec for spec in cfg.inputs}
    fixed = {value.name: _dims(value)[0] for value in real_inputs(model)
             if declared[value.name].batch and declared[value.name].shape and declared[value.name].shape[0] < 0 and _dims(value)[0] >= 0}
    if not fixed:
        return None
    name, batch = sorted(fixed.items())[0]
    if not cfg.dynamic_batch:
        raise PipelineError(f"input '{name}' of {shown} has a fixed batch dimension of {batch}; set model.{model_name}.dynamic_batch=true "
                            f"to make it dynamic, or declare its shape {[batch] + declared[name].shape[1:]} in model.{model_name}.inputs "
                            f"(a fixed batch of 1 is run one sample at a time by every stage)")
    return batch


def _shape_constants(model: onnx.ModelProto) -> Dict[str, tuple]:
    """Tensor name -> (array, where it lives) for the 1-D int64 initializers and Constant nodes (what a
    Reshape's target shape is; weights are left unread)."""
    def is_shape(tensor: onnx.TensorProto) -> bool:
        return tensor.data_type == onnx.TensorProto.INT64 and len(tensor.dims) == 1

    found = {init.name: (numpy_helper.to_array(init), init) for init in model.graph.initializer if is_shape(init)}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value" and is_shape(node.attribute[0].t):
            found[node.output[0]] = (numpy_helper.to_array(node.attribute[0].t), node)
    return found


def _make_batch_dynamic(model: onnx.ModelProto, batch: int, unbatched: set) -> dict:
    """Relabel axis 0 of inputs and outputs, and rewrite Reshape targets that write the old batch
    literally (e.g. [1, 9216]) to copy it from their input instead (0; -1 where allowzero is set)."""
    try:
        inferred = shape_inference.infer_shapes(model)
        known = {v.name: _dims(v) for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    except Exception:  # inference is a help here, not a requirement: the probe run has the last word
        known = {}
    constants = _shape_constants(model)
    rewritten = []
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in constants:
            continue
        target, _ = constants[node.input[1]]
        data_dims = known.get(node.input[0], [])
        if target.ndim != 1 or not target.size or int(target[0]) != batch or not data_dims or data_dims[0] != batch:
            continue
        allow_zero = any(a.name == "allowzero" and a.i == 1 for a in node.attribute)
        if allow_zero and -1 in target.tolist():
            continue  # no way to say "copy" here; the probe run names it if it matters
        new = target.copy()
        new[0] = -1 if allow_zero else 0
        name = f"{node.input[1]}__batch_{'inferred' if allow_zero else 'copied'}"
        if name not in constants:  # Reshapes sharing one shape constant share its rewrite too
            model.graph.initializer.append(numpy_helper.from_array(new.astype(target.dtype), name))
            constants[name] = (new, None)
        node.input[1] = name
        rewritten.append(node.name or node.output[0])
    for value in list(model.graph.input) + list(model.graph.output):
        shape = value.type.tensor_type.shape
        if shape.dim and value.name not in unbatched:
            shape.dim[0].Clear()
            shape.dim[0].dim_param = "batch"
    del model.graph.value_info[:]  # stale static shapes; simplify re-infers them
    return {"batch_made_dynamic": True, **({"reshape_batch_rewritten": rewritten} if rewritten else {})}


def normalize_onnx(src: Path, cfg: ModelConfig, model_name: str, shown: str = "") -> tuple[onnx.ModelProto, dict]:
    """The user's file (``src``; ``shown`` is how messages name it) made to fit, and what changed."""
    shown = shown or str(src)
    model = load_model(src, "bring-your-own ONNX", shown=shown)
    source_nodes = len(model.graph.node)
    _check_contents(model, shown)
    model, changes = _upgrade(model, cfg.opset, shown)
    if not any(p.key == SOURCE_NODES_KEY for p in model.metadata_props):  # simplify reports the user's own count
        model.metadata_props.add(key=SOURCE_NODES_KEY, value=str(source_nodes))
    _check_interface(model, cfg, model_name, shown)
    batch = _fixed_batch(model, cfg, model_name, shown)
    if batch is not None:
        changes.update(_make_batch_dynamic(model, batch, {spec.name for spec in cfg.inputs if not spec.batch}))
    declared = {spec.name: spec for spec in cfg.inputs}
    for value in model.graph.input:  # open dims the config names get its names, so profiles can refer to them
        if value.name in declared:
            for axis, dim in enumerate(value.type.tensor_type.shape.dim):
                if not dim.HasField("dim_value"):
                    dim.dim_param = declared[value.name].axis_name(axis)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise PipelineError(f"{shown} is not valid after normalisation: {str(exc).splitlines()[0]}") from exc
    return model, changes


def probe_feeds(cfg: ModelConfig, batch: int, seed: int = 0) -> Optional[Dict[str, np.ndarray]]:
    """Synthetic feeds of the declared shapes and dtypes (``batch`` on batch axes; other free axes the
    first profile's opt), or None where a free axis has no size to take: a structural probe that
    needs no data, so importing the file does not depend on the dataset."""
    opt = cfg.profiles[0].opt if cfg.profiles else {}
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in cfg.inputs:
        shape = []
        for axis, dim in enumerate(spec.shape):
            if dim >= 0:
                shape.append(dim)
            elif axis == 0 and spec.batch:
                shape.append(batch)
            elif spec.axis_name(axis) in opt:
                shape.append(opt[spec.axis_name(axis)])
            else:
                return None
        dtype = np.dtype(spec.dtype)
        feeds[spec.name] = rng.standard_normal(shape).astype(dtype) if dtype.kind == "f" else np.zeros(shape, dtype)
    return feeds


def probe(model: bytes | str, feeds: Dict[str, np.ndarray], cfg: ModelConfig, model_name: str, shown: str, source: str) -> Dict[str, np.ndarray]:
    """Run ``feeds`` through ``model`` (serialized, or a file's path: a model over 2 GB cannot be one
    protobuf) with ONNX Runtime: a batch larger than the file's own, and the batch axis of every output,
    checked before any later stage relies on them; returns the outputs. ``source`` says where the feeds came from."""
    import onnxruntime as ort

    batch = max((len(feeds[spec.name]) for spec in cfg.inputs if spec.batch and spec.shape), default=1)
    hint = (f"; its batch was made dynamic (model.{model_name}.dynamic_batch=true) but a node still assumes the file's own batch: "
            f"fix it in the exporter, or declare the fixed batch in model.{model_name}.inputs with dynamic_batch=false") if batch > 1 else ""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    except Exception as exc:  # ONNX Runtime names the failing node in its message
        first = str(exc).strip().splitlines()[0][:500]
        raise PipelineError(f"{shown} does not run on a batch of {batch} {source}: {first}{hint}") from exc
    if cfg.one_sample_at_a_time:
        return outputs  # outputs of a one-sample model may have no batch axis (a returned state)
    for name, value in outputs.items():
        if value.ndim == 0 or value.shape[0] != batch:
            raise PipelineError(f"{shown} gives output '{name}' of shape {list(value.shape)} for a batch of {batch} {source}: "
                                f"its axis 0 must be the batch{hint}")
    return outputs


def check_data_fits(model_path: Path, feeds: Dict[str, np.ndarray], cfg: ModelConfig, model_name: str, dataset_name: str) -> None:
    """Real samples against the model: names, dtypes and shapes as declared, a run, and finite FP32
    outputs (a +-inf constant is allowed only where it does not reach them)."""
    model = onnx.load(str(model_path), load_external_data=False)  # the graph; ONNX Runtime reads the weights itself
    inputs = [i.name for i in real_inputs(model)]
    if sorted(feeds) != sorted(inputs):
        raise PipelineError(f"dataset '{dataset_name}' feeds inputs {sorted(feeds)}; the model's inputs are {sorted(inputs)}: "
                            f"name the model's input in dataset.{dataset_name}.input_name (image datasets), store arrays named "
                            f"{sorted(inputs)} (tensor_files), or pick a dataset that feeds them with model.{model_name}.dataset")
    for spec in cfg.inputs:
        value = feeds[spec.name]
        if value.dtype != np.dtype(spec.dtype):
            raise PipelineError(f"dataset '{dataset_name}' gives input '{spec.name}' as {value.dtype}; model.{model_name}.inputs declares "
                                f"{spec.dtype} (image datasets: dataset.{dataset_name}.preprocess.dtype; tensor files: the stored dtype)")
        want = spec.shape
        if value.ndim != len(want) or any(w >= 0 and w != h for w, h in zip(want, value.shape)):
            raise PipelineError(f"dataset '{dataset_name}' gives input '{spec.name}' samples of shape {list(value.shape)}; "
                                f"model.{model_name}.inputs declares {want}: they must agree (e.g. dataset.{dataset_name}.preprocess.size)")
    shown = f"model '{model_name}'"
    outputs = probe(str(model_path), feeds, cfg, model_name, shown, f"real samples from dataset '{dataset_name}'")
    first = model.graph.output[0].name
    if option_value(cfg.task) in ("classification", "sequence"):  # argmax over an axis of size 1 would agree whatever the output
        problem = class_axis_problem(first, outputs[first].shape, cfg.class_axis, option_value(cfg.task))
        if problem:
            raise PipelineError(f"{problem} (model.{model_name}.task, model.{model_name}.class_axis)")
    for name, value in outputs.items():
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            infinite = infinite_constants(model)
            cause = (f"; the graph holds +-inf constants ({', '.join(f'{k} read by node {v}' for k, v in sorted(infinite.items())[:3])}) "
                     f"that reach it" if infinite else "")
            raise PipelineError(f"{shown} gives NaN/Inf in output '{name}' on real samples from dataset '{dataset_name}' in FP32{cause}")


def import_onnx(src: Path, cfg: ModelConfig, model_name: str, out_path: Path, shown: str = "") -> dict:
    """The user's file normalised and probed with synthetic feeds of the declared shapes (real data is
    checked at calibrate, so adding samples reruns calibrate onwards, not the import)."""
    shown = shown or str(src)
    model, changes = normalize_onnx(src, cfg, model_name, shown)
    feeds = probe_feeds(cfg, cfg.batch_size(2))
    if feeds is not None:
        probe(model.SerializeToString(), feeds, cfg, model_name, shown, f"synthetic samples of the declared shapes (model.{model_name}.inputs)")
    model.producer_name, model.producer_version = "trt-pipeline", ""
    with atomic_path(out_path) as tmp:
        onnx.save(model, str(tmp))
    return changes
