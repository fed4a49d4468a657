"""Triton Python-backend model (copied into a repository as ``<model>/<version>/model.py``): serves a
pipeline engine through the project's own runner, vendored beside it under ``pipeline/``.

Dynamic batching hands ``execute`` several requests at once: their inputs are concatenated along
the batch axis, run as one batch, and the outputs split back per request.
"""
import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by Triton's Python backend


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
        self.runner = get_backend(sidecar["backend"]).load(version_dir / "engine", threads=int(parameters.get("intra_op_threads", "0")), expect=expect)
        self.input_names = [spec.name for spec in self.runner.inputs]
        self.output_names = [output["name"] for output in config["output"]]

    def execute(self, requests):
        feeds = [{name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.input_names} for request in requests]
        counts = [len(feed[self.input_names[0]]) for feed in feeds]
        batch = {name: np.concatenate([feed[name] for feed in feeds]) for name in self.input_names}
        results = self.runner.run(batch)
        responses, start = [], 0
        for count in counts:
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(results[name][start:start + count])) for name in self.output_names]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += count
        return responses

    def finalize(self):
        self.runner.close()
