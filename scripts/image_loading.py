"""Time loading and preprocessing a user's images for calibration: 500 JPEGs of 640 x 480 (crops of the
photographs scikit-image ships, written with PIL), decoded, centre-cropped to 224, normalised and stacked
in calibration chunks of 16, through ``image_folder``. Threads 1 and the default, side by side in
alternating rounds; replaces the '## Loading your images' section of docs/benchmarks.md.

    python scripts/image_loading.py [--images 500] [--rounds 3] [--update docs/benchmarks.md]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from pipeline.config.schema import DatasetConfig, DatasetSource, Preprocess
from pipeline.data import load_dataset
from pipeline.data import user_data
from pipeline.evaluate.host import host_cpu

HEADING = "## Loading your images (image_folder, 640 x 480 JPEG)"


def write_jpegs(folder: Path, count: int) -> None:
    from importlib.resources import files

    import numpy as np
    from PIL import Image

    photos = [Image.open(str(files("skimage") / "data" / name)).convert("RGB")
              for name in ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg")]
    rng = np.random.default_rng(0)
    for index in range(count):
        photo = photos[index % len(photos)]
        side = int(min(photo.size) * rng.uniform(0.6, 1.0))
        left, top = int(rng.integers(0, photo.width - side + 1)), int(rng.integers(0, photo.height - side + 1))
        photo.crop((left, top, left + side, top + side * 3 // 4)).resize((640, 480)).save(folder / f"{index:04d}.jpg", quality=90)


def load_all(folder: Path, count: int) -> float:
    started = time.perf_counter()
    cfg = DatasetConfig(source=DatasetSource.image_folder, path=str(folder), num_samples=None, num_validation=1, preprocess=Preprocess())
    dataset = load_dataset("images", cfg)
    for _ in dataset.batches(range(count), 16):
        pass
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--update", default="docs/benchmarks.md")
    args = parser.parse_args()
    from serving_benchmarks import replace_section

    default_threads = user_data.DECODE_THREADS
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        write_jpegs(folder, args.images)
        load_all(folder, args.images)  # warm the page cache: the figure is decode + preprocess, not the disk
        times = {1: [], default_threads: []}
        for _ in range(args.rounds):
            for threads in times:
                user_data.DECODE_THREADS = threads
                times[threads].append(load_all(folder, args.images))
    one, default = statistics.median(times[1]), statistics.median(times[default_threads])
    section = [HEADING, "",
               f"`python scripts/image_loading.py` on {host_cpu().describe()}: {args.images} JPEGs decoded, centre-cropped to 224, "
               f"normalised and stacked in chunks of 16, median of {args.rounds} alternating rounds.", "",
               "| decode threads | seconds | images/s |", "|---|---|---|",
               f"| 1 | {one:.2f} | {args.images / one:.0f} |",
               f"| {default_threads} (default) | {default:.2f} | {args.images / default:.0f} |", "",
               f"Threads {default_threads} vs 1: {one / default:.2f}x. Floor: 500 images <= 10 s on the 2-core machine.", ""]
    path = Path(args.update)
    path.write_text(replace_section(path.read_text(), section).rstrip("\n") + "\n")
    print("\n".join(section))


if __name__ == "__main__":
    main()
