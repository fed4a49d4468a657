"""docs/settings.md from the schema: every setting of the single config groups (calibration, benchmark,
serving) with its default, allowed range and description, as pipeline/config/schema.py declares them, the
one place they live (the conf/ options set only what they choose)."""
from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
from typing import List

from ..config.schema import BenchmarkConfig, CalibrationConfig, ServingConfig

GROUPS = (("calibration", CalibrationConfig), ("benchmark", BenchmarkConfig), ("serving", ServingConfig))
HEADER = """# Settings

Generated from `pipeline/config/schema.py` by `python -m pipeline.report.settings` (a test fails when this
file is stale). Each setting's default, range and description live there, beside each other; the options in
`conf/calibration`, `conf/benchmark` and `conf/serving` set only what they choose. Composing refuses a value
outside its range, naming the key and the range. Override any of them with `make params OVERRIDES=...` or
`dvc exp run -S <key>=<value>`. Models, targets, precisions and datasets are described in their conf files
and in [targets.md](targets.md).
"""


def _value(value) -> str:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def rows(cls, prefix: str) -> List[str]:
    lines = []
    for spec in dataclasses.fields(cls):
        key = f"{prefix}.{spec.name}"
        default = spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
        if dataclasses.is_dataclass(default):
            lines += rows(type(default), key)
            continue
        bound = spec.metadata.get("bound")
        allowed = bound.describe().replace("must be ", "") if bound else spec.metadata.get("note", "")
        if isinstance(default, enum.Enum):
            allowed = "one of " + ", ".join(member.value for member in type(default))
        elif isinstance(default, list) and default and isinstance(default[0], enum.Enum):
            allowed = "each one of " + ", ".join(member.value for member in type(default[0]))
        lines.append(f"| `{key}` | `{_value(default)}` | {allowed} | {spec.metadata.get('help', '')} |")
    return lines


def render() -> str:
    parts = [HEADER]
    for group, cls in GROUPS:
        parts += [f"\n## {group}\n", " ".join((cls.__doc__ or "").split()), "",
                  "| key | default | allowed | what it is |", "|---|---|---|---|", *rows(cls, group)]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    (Path(__file__).resolve().parents[2] / "docs" / "settings.md").write_text(render(), encoding="utf-8")
