"""Per-step cost of running each step in its image against running it as a subprocess.

The same finetune pipeline, with the same parameters and data, runs twice through kfp.local:
with the SubprocessRunner in this environment, and compiled against the step images with
every step in its hardened container (finetuner.launch.containers). Each step's wall time comes
from kfp.local's own "Executing task" / "Task ... finished" log records.

    make images && HF_HUB_OFFLINE=1 CONTAINERS_CONF=images/containers.conf \\
        .venv/bin/python bench/container_overhead.py
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import tempfile
import time
from pathlib import Path

from finetuner.io import s3server, storage
from finetuner.launch.local import run_pipeline

ROOT = Path(__file__).resolve().parent.parent
TASK = re.compile(r"(Executing task|Task) \W*'?([\w-]+)'?")


class StepTimes(logging.Filter):
    """Records when kfp.local starts and finishes each task. A filter on the root logger,
    since kfp.local replaces the root logger's handlers for the run."""

    def __init__(self):
        super().__init__()
        self.start: dict[str, float] = {}
        self.seconds: dict[str, float] = {}

    def filter(self, record):
        self.note(record)
        return True

    def note(self, record):
        text = re.sub(r"\x1b\[[0-9;]*m", "", record.getMessage())
        match = TASK.search(text)
        if not match:
            return
        name = match.group(2)
        if match.group(1) == "Executing task":
            self.start[name] = record.created
        elif "finished" in text and name in self.start:
            self.seconds[name] = record.created - self.start[name]


def timed_run(params: dict, images) -> tuple[dict[str, float], float]:
    handler = StepTimes()
    logging.getLogger().addFilter(handler)
    start = time.perf_counter()
    try:
        run_pipeline(params, images=images)
    finally:
        logging.getLogger().removeFilter(handler)
    return handler.seconds, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="ghcr.io/finetuner-kfp/finetuner:0.1.0")
    parser.add_argument("--gpu-image", default="ghcr.io/finetuner-kfp/finetuner-gpu:0.1.0")
    parser.add_argument("--rows", type=int, default=200, help="training pairs")
    args = parser.parse_args()
    server = s3server.start(Path(tempfile.mkdtemp(prefix="bench-s3-")))
    try:
        os.environ.update(server.env())
        server.create_bucket("bench")
        lines = (ROOT / "examples" / "wordnet_pairs.csv").read_text().splitlines(True)
        data = "s3://bench/pairs.csv"
        storage.write_text(data, "".join(lines[: args.rows + 1]))
        results = {}
        for label, images in (
            ("subprocess", None),
            ("container", (args.image, args.gpu_image)),
        ):
            params = {
                "model": "minilm-l6-en", "train_data": data, "val_split": 0.2, "epochs": 1,
                "batch_size": 16, "max_length": 32, "output_uri": f"s3://bench/{label}/",
            }  # fmt: skip
            results[label] = timed_run(params, images)
    finally:
        server.stop()
    (sub, sub_total), (box, box_total) = results["subprocess"], results["container"]
    print(f"\n{'step':<20}{'subprocess s':>14}{'container s':>13}{'overhead s':>12}")
    for name in sub:
        if name in box:
            print(f"{name:<20}{sub[name]:>14.1f}{box[name]:>13.1f}{box[name] - sub[name]:>12.1f}")
    print(f"{'whole run':<20}{sub_total:>14.1f}{box_total:>13.1f}{box_total - sub_total:>12.1f}")


if __name__ == "__main__":
    main()
