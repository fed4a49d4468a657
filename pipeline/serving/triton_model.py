"""Triton Python-backend model (copied into a repository as ``<model>/<version>/model.py``): serves a
pipeline engine through the project's own runner, vendored beside it under ``pipeline/``.

Dynamic batching hands ``execute`` several requests at once: their inputs are concatenated along
the batch axis, run as one batch, and the outputs split back per request. A runner that keeps one
session per shape gets its batches padded to a few sizes (see ``initialize``).
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by Triton's Python backend


def batch_buckets(max_batch: int) -> list:
    """The batch sizes padded batches take: powers of two below ``max_batch``, then ``max_batch``."""
    sizes = [1 << k for k in range(max_batch.bit_length()) if (1 << k) < max_batch]
    return sizes + [max_batch] if max_batch else []


class TritonPythonModel:
    def initialize(self, args):
        version_dir = Path(args["model_repository"]) / args["model_version"]
        sys.path.insert(0, str(version_dir))
        from pipeline.backends import get_backend
        from pipeline.backends.base import SIDECAR, RunnerPerShape

        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        sidecar = json.loads((version_dir / "engine" / SIDECAR).read_text())
        packaged = json.loads((version_dir / "package.json").read_text())  # this version's build (versions share the config)
        expect = {"build": packaged["pipeline_build"], "precision": packaged["pipeline_precision"]}
        # A KIND_GPU instance runs on the GPU Triton gave it (CUDA's index, as in the server's process).
        gpu = int(args["model_instance_device_id"]) if args.get("model_instance_kind") == "GPU" else 0
        self.name = args.get("model_instance_name", args.get("model_name", "model"))
        self.runner = get_backend(sidecar["backend"]).load(version_dir / "engine", threads=int(parameters.get("intra_op_threads", "0")),
                                                           expect=expect, varying_shapes=True, gpu=gpu)
        self.input_names = [spec.name for spec in self.runner.inputs]
        self.output_names = [output["name"] for output in config["output"]]
        # A runner with a session per shape (ONNX Runtime on CUDA, whose convolutions are set up again at
        # every change of shape: 0.1-0.2 s a ResNet-50 batch on an H200) gets every batch padded up to a
        # power of two or the largest batch, each size run once here, before any request arrives.
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.buckets = batch_buckets(int(config.get("max_batch_size", 0))) if isinstance(self.runner, RunnerPerShape) else []
        self.padded = {}  # (input, size) -> the batch array reused by every batch of that size
        if all(-1 not in spec.shape[1:] for spec in self.runner.inputs):
            for size in self.buckets:
                self.runner.run({spec.name: self._padded(spec.name, size, tuple(spec.shape[1:]), np.dtype(spec.dtype)) for spec in self.runner.inputs})
        self.timing = {"batches": 0, "images": 0, "padded_images": 0, "gather_s": 0.0, "run_s": 0.0, "respond_s": 0.0}

    def execute(self, requests):
        started = time.perf_counter()
        feeds = [{name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.input_names} for request in requests]
        if not self.batched:  # max_batch_size 0: each request is one sample with full dims (inputs without a batch axis too)
            return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(name, np.ascontiguousarray(value))
                                                               for name, value in self.runner.run(feed).items() if name in self.output_names])
                    for feed in feeds]
        counts = [len(feed[self.input_names[0]]) for feed in feeds]
        total = sum(counts)
        size = next((bucket for bucket in self.buckets if bucket >= total), total)
        batch = {}
        for name in self.input_names:
            parts = [feed[name] for feed in feeds]
            if self.buckets:
                batch[name] = self._padded(name, size, parts[0].shape[1:], parts[0].dtype)
                batch[name][total:] = 0  # rows past the requests are padding
            else:
                batch[name] = np.empty((size, *parts[0].shape[1:]), parts[0].dtype)
            np.concatenate(parts, out=batch[name][:total])
        gathered = time.perf_counter()
        results = self.runner.run(batch)
        ran = time.perf_counter()
        responses, start = [], 0
        for count in counts:
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(results[name][start:start + count])) for name in self.output_names]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += count
        timing = self.timing
        timing["batches"] += 1
        timing["images"] += total
        timing["padded_images"] += size
        timing["gather_s"] += gathered - started
        timing["run_s"] += ran - gathered
        timing["respond_s"] += time.perf_counter() - ran
        gpu_ms = getattr(self.runner, "last_timing", {})  # CUDA events: copy in, compute, copy out
        for stage, ms in gpu_ms.items():
            timing[stage] = timing.get(stage, 0.0) + ms
        return responses

    def _padded(self, name: str, size: int, row_shape: tuple, dtype) -> np.ndarray:
        """The array batches of ``size`` are gathered into, made once: a fresh 77 MB array per ResNet-50
        batch of 128 costs its page faults again at every batch."""
        key = (name, size)
        if key not in self.padded or self.padded[key].shape[1:] != tuple(row_shape) or self.padded[key].dtype != dtype:
            self.padded[key] = np.zeros((size, *row_shape), dtype)
        return self.padded[key]

    def finalize(self):
        batches = max(self.timing["batches"], 1)
        # Where an instance's time went, per batch: read from the server log when tuning a deployment.
        print(f"{self.name}: {self.timing['batches']} batches, {self.timing['images']} images padded to {self.timing['padded_images']}; "
              f"per batch: gather {1000 * self.timing['gather_s'] / batches:.2f} ms, run {1000 * self.timing['run_s'] / batches:.2f} ms, "
              f"respond {1000 * self.timing['respond_s'] / batches:.2f} ms"
              + "".join(f", {stage[:-3]} {ms / batches:.2f} ms" for stage, ms in self.timing.items() if stage.endswith("_ms")),
              file=sys.stderr, flush=True)
        self.runner.close()
