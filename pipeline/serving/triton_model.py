"""Triton Python-backend model (copied into a repository as ``<model>/<version>/model.py``): serves a
pipeline engine through the project's own runner, vendored beside it under ``pipeline/``.

Dynamic batching hands ``execute`` several requests at once: their inputs are concatenated along
the batch axis, run as one batch, and the outputs split back per request. On a GPU the batch is
padded to one of a few sizes, each with its own session (see ``initialize``).
"""
import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by Triton's Python backend


def batch_buckets(max_batch: int) -> list:
    """The batch sizes a GPU instance runs: powers of two below ``max_batch``, then ``max_batch``."""
    sizes = [1 << k for k in range(max_batch.bit_length()) if (1 << k) < max_batch]
    return sizes + [max_batch] if max_batch else []


class TritonPythonModel:
    def initialize(self, args):
        version_dir = Path(args["model_repository"]) / args["model_version"]
        sys.path.insert(0, str(version_dir))
        from pipeline.backends import get_backend

        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        sidecar = json.loads((version_dir / "engine" / "sidecar.json").read_text())
        packaged = json.loads((version_dir / "package.json").read_text())  # this version's build (versions share the config)
        expect = {"build": packaged["pipeline_build"], "precision": packaged["pipeline_precision"]}
        # A KIND_GPU instance runs on the GPU Triton gave it (CUDA's index, as in the server's process).
        gpu_instance = args.get("model_instance_kind") == "GPU"
        backend, threads = get_backend(sidecar["backend"]), int(parameters.get("intra_op_threads", "0"))

        def load():  # kernels by heuristics: a session timing them would stall the first batch of each size
            return backend.load(version_dir / "engine", threads=threads, expect=expect, varying_shapes=True,
                                gpu=int(args["model_instance_device_id"]) if gpu_instance else 0)

        # Through this server on an H200, ResNet-50 batches of mixed sizes cost 0.1-0.2 s each on one
        # ONNX Runtime CUDA session (7 ms a request when every batch held one image): the provider seems
        # to set its convolutions up again whenever the input shape changes. A GPU instance pads each
        # batch up to a power of two (or the largest batch) and keeps one session per such size, each
        # run once here before any request, so no session ever sees a second shape.
        self.buckets = batch_buckets(int(config.get("max_batch_size", 0))) if gpu_instance else []
        self.runners = {size: load() for size in self.buckets} or {0: load()}
        specs = next(iter(self.runners.values())).inputs
        self.input_names = [spec.name for spec in specs]
        self.output_names = [output["name"] for output in config["output"]]
        if all(-1 not in spec.shape[1:] for spec in specs):
            for size in self.buckets:
                self.runners[size].run({spec.name: np.zeros((size, *spec.shape[1:]), spec.dtype) for spec in specs})

    def execute(self, requests):
        feeds = [{name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.input_names} for request in requests]
        counts = [len(feed[self.input_names[0]]) for feed in feeds]
        total = sum(counts)
        size = next((bucket for bucket in self.buckets if bucket >= total), total)
        batch = {}
        for name in self.input_names:
            parts = [feed[name] for feed in feeds]
            batch[name] = np.zeros((size, *parts[0].shape[1:]), parts[0].dtype)  # rows past the requests are padding
            np.concatenate(parts, out=batch[name][:total])
        results = self.runners[size if self.buckets else 0].run(batch)
        responses, start = [], 0
        for count in counts:
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(results[name][start:start + count])) for name in self.output_names]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += count
        return responses

    def finalize(self):
        for runner in reversed(list(self.runners.values())):
            runner.close()
