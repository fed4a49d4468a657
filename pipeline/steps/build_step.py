"""build: the engine for one build, through its target's backend."""
from __future__ import annotations

from ..backends import SIDECAR, BuildRequest, get_backend
from ..config.load import BuildContext
from ..io import atomic_dir, require_file, sha256_json, write_json
from ..paths import build_paths


def build(ctx: BuildContext) -> dict:
    cfg = ctx.config
    paths = build_paths(cfg, ctx.name)
    backend = get_backend(ctx.target.backend)
    backend.check_available()  # the library that builds; running on the device is checked at load
    source = require_file(paths.calibrated, "calibrated ONNX")
    # Every build starts from an empty timing cache: a cache shared between builds would make engine
    # bytes depend on build order, an input DVC cannot see. The build's own cache is in its artifact.
    with atomic_dir(paths.engine_dir) as out:
        request = BuildRequest(
            onnx_path=source, out_dir=out, target_name=ctx.entry.target, target=ctx.target, model=ctx.model,
            precision=ctx.precision_name, config_hash=sha256_json(ctx.config_fingerprint()), build_name=ctx.name,
        )
        sidecar = backend.build(request)
        # Whoever serves the artifact must feed it as it was calibrated and validated.
        preprocess = ctx.image_preprocess()
        if preprocess is not None:
            sidecar["preprocess"] = preprocess
            write_json(out / SIDECAR, sidecar)
    return sidecar
