"""The project's plots as images a person opens without a network.

dvc.yaml's top-level plot definitions (with the templates in .dvc/plots) are the single source: DVC
fills them with the data (`dvc plots show --json`), and vl-convert, which embeds Vega-Lite, renders
each filled spec to SVG and PNG, and to one standalone HTML page with the Vega libraries inlined.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

from ..errors import PipelineError
from ..files import atomic_dir

PNG_SCALE = 2.0  # crisp on high-density screens


def filled_specs(repo: Path) -> Dict[str, dict]:
    """{plot name: Vega-Lite spec filled with the workspace's data}, from DVC itself; any plot DVC
    fails to load is an error naming the plot and DVC's reason."""
    # This interpreter's DVC (the venv's), whatever PATH says.
    done = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "--json"], cwd=repo, capture_output=True, text=True)
    try:
        shown = json.loads(done.stdout)
    except json.JSONDecodeError as exc:
        raise PipelineError(f"`dvc plots show --json` gave no JSON (exit {done.returncode}): {(done.stderr or done.stdout)[-500:]}") from exc
    if shown.get("errors"):
        raise PipelineError("DVC cannot draw these plots: " + "; ".join(f"{e['name']}: {e['type']} {e['msg']}" for e in shown["errors"]))
    specs = {}
    for name, renders in shown.get("data", {}).items():
        for render in renders:
            if render.get("type") == "vega":
                specs[name] = render["content"]
    if not specs:
        raise PipelineError("dvc.yaml defines no plot that DVC can draw")
    return specs


def file_stem(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def render_images(specs: Dict[str, dict], out_dir: Path) -> List[Path]:
    """SVG and PNG per plot, plus plots.html (every plot, Vega inlined: opens offline)."""
    import vl_convert

    written = []
    with atomic_dir(out_dir) as tmp:
        sections = []
        for name, spec in sorted(specs.items()):
            stem = file_stem(name)
            (tmp / f"{stem}.svg").write_text(vl_convert.vegalite_to_svg(spec), encoding="utf-8")
            (tmp / f"{stem}.png").write_bytes(vl_convert.vegalite_to_png(spec, scale=PNG_SCALE))
            sections.append((name, vl_convert.vegalite_to_html(spec, bundle=True)))
            written += [out_dir / f"{stem}.svg", out_dir / f"{stem}.png"]
        # One page per plot would repeat the inlined libraries; an index links the standalone pages.
        for name, html in sections:
            (tmp / f"{file_stem(name)}.html").write_text(html, encoding="utf-8")
        index = ["<!doctype html><meta charset='utf-8'><title>trt-pipeline plots</title><h1>Plots</h1><ul>"]
        index += [f"<li><a href='{file_stem(name)}.html'>{name}</a> (<a href='{file_stem(name)}.svg'>SVG</a>)</li>" for name, _ in sections]
        (tmp / "index.html").write_text("\n".join(index + ["</ul>"]) + "\n", encoding="utf-8")
    return written
