"""The project modules every stage runs (the entry plumbing, config, files and paths), kept in one list here
and written at the end of each stage's deps in dvc.yaml by ``python -m pipeline compose``; ``check`` fails
when dvc.yaml has drifted from it. Each stage's own modules stay in dvc.yaml, written by hand, and
tests/test_stage_dependencies.py checks both against what the stages really import."""
from __future__ import annotations

import re
from pathlib import Path
from typing import List

CORE_MODULES = (
    "pipeline/__init__.py",
    "pipeline/cli.py",
    "pipeline/console.py",
    "pipeline/errors.py",
    "pipeline/files.py",
    "pipeline/paths.py",
    "pipeline/config/__init__.py",
    "pipeline/config/checks.py",
    "pipeline/config/load.py",
    "pipeline/config/schema.py",
    "stages/__init__.py",
)
_ITEM = re.compile(r"^(\s*)- ([^\s#]+)\s*(#.*)?$")


def with_core_modules(text: str) -> str:
    """dvc.yaml's text with each stage's deps ending in CORE_MODULES, in order, once (other lines as they were)."""
    lines, out = text.splitlines(keepends=True), []
    index = 0
    while index < len(lines):
        line = lines[index]
        out.append(line)
        index += 1
        if line.strip() != "deps:":
            continue
        indent = len(line) - len(line.lstrip())
        block = []
        while index < len(lines) and (lines[index].strip() == "" or len(lines[index]) - len(lines[index].lstrip()) > indent):
            block.append(lines[index])
            index += 1
        trailing = []
        while block and block[-1].strip() == "":
            trailing.insert(0, block.pop())
        items = [entry for entry in block if _ITEM.match(entry)]
        item_indent = _ITEM.match(items[0]).group(1) if items else " " * (indent + 2)
        kept = [entry for entry in block if not (_ITEM.match(entry) and _ITEM.match(entry).group(2) in CORE_MODULES)]
        out += kept + [f"{item_indent}- {module}\n" for module in CORE_MODULES] + trailing
    return "".join(out)


def core_module_problems(path: Path) -> List[str]:
    """'' lines naming what drifted: dvc.yaml must equal ``with_core_modules`` of itself."""
    text = path.read_text(encoding="utf-8")
    if with_core_modules(text) == text:
        return []
    return [f"{path}: a stage's deps do not end with the core modules of pipeline/dvc_file.py (in that order): run `make params`"]


def write_core_modules(path: Path) -> bool:
    """Rewrite dvc.yaml's core-module lists; whether anything changed."""
    text = path.read_text(encoding="utf-8")
    updated = with_core_modules(text)
    if updated != text:
        path.write_text(updated, encoding="utf-8")
    return updated != text
