"""docs/targets.md from conf/target: every target's facts and build settings, one table each."""
from __future__ import annotations

from pathlib import Path

import yaml

HEADER = """# Targets

Generated from `conf/target/*.yaml` by `python -m pipeline.report.targets` (a test fails when this
file is stale). A target fixes the engine library, the device, the precisions it can run (others are
refused when the config is composed), the Q/DQ flavour calibrate writes for it, and its build settings.
Where a target lists more than one runtime, the build builds, gates and times each on the host and keeps
the fastest that passes ([cpu_targets.md](cpu_targets.md), "Runtime chosen by measurement").

| target | runtimes (chosen by measurement at build) | device | CPU ISA | compute capability | TensorRT release | precisions | Q/DQ flavour |
|---|---|---|---|---|---|---|---|
"""


def render(conf_dir: Path) -> str:
    rows, settings = [], []
    for path in sorted((conf_dir / "target").glob("*.yaml")):
        target = yaml.safe_load(path.read_text())
        name = path.stem
        quant = target.get("quantization", {})
        flavour = quant.get("format", "") + (", per-channel" if quant.get("per_channel") else "") + (", 7-bit weights" if quant.get("reduce_range") else "")
        if quant.get("min_layer_speedup"):
            flavour += f", speed guard {quant['min_layer_speedup']}x"
        rows.append(
            f"| `{name}` | {', '.join(target.get('runtimes') or [target['backend']])} | {target['device']} | {target.get('cpu_isa') or '-'} | {target.get('compute_capability') or '-'} "
            f"| {target.get('tensorrt_version') or '-'} | {', '.join(target['precisions'])} | {flavour} |"
        )
        build = ", ".join(f"`{k}={v}`" for k, v in target.get("build", {}).items())
        settings.append(f"- `{name}` ({target.get('description', '')}): {build}")
    return HEADER + "\n".join(rows) + "\n\n## Build settings\n\n" + "\n".join(settings) + "\n"


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[2]
    (root / "docs" / "targets.md").write_text(render(root / "conf"))
