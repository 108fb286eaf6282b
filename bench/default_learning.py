"""Do the defaults learn? Models trained from scratch, on small real labeled sets.

`pointnet-base` (meshes) and `mlp` (vectors) start from random weights, so the learning rate
and epochs that fine-tune a pretrained transformer (5e-5, 1 epoch) may leave them where they
started. This builds two small labeled sets from real data on this machine (no downloads)
and runs `finetuner.fit` on each, with the family's defaults (learning_rate and epochs
auto), the former defaults of every family (5e-5, 1 epoch), or a given learning rate and
epochs (every other parameter at its default), and prints nDCG@10 and MRR on held-out
items before and after training.

  meshes:  real meshes of Debian's assimp-testmodels, one label per mesh; each item is a
           variant of it (rotated about the up axis, scaled per axis, its vertices
           jittered), written as a PLY file. The eval set holds other variants of the same
           meshes than training does.
  vectors: Fashion-MNIST test images of Debian's dataset-fashion-mnist, downsampled to
           14x14 and flattened to 196 numbers in [0, 1], labeled by class; the eval set
           holds other images than training does.

Usage:
  python bench/default_learning.py                  # the former defaults and the family's
  python bench/default_learning.py --settings defaults --families mlp
  python bench/default_learning.py --learning-rate 3e-4 --epochs 20   # one given setting
  python bench/default_learning.py --data-dir DIR --keep              # keep the data sets
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "default_learning.json"
ASSIMP_MODELS = "/usr/share/assimp/models"
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"

# One label per real mesh (distinct shapes, in the formats trimesh reads).
MESHES = {
    "wuson": "OFF/Wuson.off",
    "spider": "OBJ/spider.obj",
    "cube": "OFF/Cube.off",
    "sphere-with-hole": "STL/sphereWithHole.stl",
    "concave-polygon": "OBJ/concave_polygon.obj",
    "regr01": "OBJ/regr01.obj",
    "3dsmax-export": "STL/3DSMaxExport.STL",
    "clearcoat": "glTF2/ClearCoat-glTF/ClearCoatTest.gltf",
}
VECTOR_SIDE = 14  # 28x28 images averaged over 2x2 blocks: 196 numbers

# The learning rate and epochs every family trained with before families declared their
# own: the fine-tuning rate of pretrained transformers. The families' own are in
# finetuner/models/mlp.py and pointnet.py (AdamW's usual rate from scratch, and enough passes
# over a small set: PointNet++ moves only after about 16 steps on the meshes).
FORMER = {"learning_rate": 5e-5, "epochs": 1}
FAMILIES = ("mlp", "pointnet-base")


def build_meshes(folder: Path, train_per_label: int = 6, eval_per_label: int = 4, seed: int = 0):
    """Write the mesh variants under folder/meshes and train/eval CSVs of (file, label) rows;
    (train CSV, eval CSV). Each variant is a distinct file: the eval rows are variants that
    training never sees."""
    import numpy as np
    import trimesh

    rng = np.random.default_rng(seed)
    (folder / "meshes").mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[str]] = {"train": [], "eval": []}
    for label, ref in MESHES.items():
        base = trimesh.load(f"{ASSIMP_MODELS}/{ref}", force="mesh")
        extent = float(np.linalg.norm(base.extents))
        for i in range(train_per_label + eval_per_label):
            angle = rng.uniform(0, 2 * np.pi)
            c, s = np.cos(angle), np.sin(angle)
            transform = np.diag([*rng.uniform(0.8, 1.25, size=3), 1.0])
            transform[:2, :2] = np.array([[c, -s], [s, c]]) @ transform[:2, :2]
            mesh = base.copy()
            mesh.apply_transform(transform)
            jitter = rng.normal(0, 0.005 * extent, size=mesh.vertices.shape)
            mesh.vertices = mesh.vertices + jitter
            name = f"meshes/{label}-{i:02d}.ply"
            mesh.export(folder / name)
            rows["train" if i < train_per_label else "eval"].append(f"{name},{label}")
    return _write_rows(folder, "meshes", rows)


def build_vectors(folder: Path, train_per_label: int = 100, eval_per_label: int = 20):
    """Fashion-MNIST test images as 196-number vectors with their class labels: the first
    train_per_label images of each class for training, the next eval_per_label for eval;
    (train CSV, eval CSV)."""
    import numpy as np

    with gzip.open(f"{FASHION_MNIST}/t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(f"{FASHION_MNIST}/t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    small = images.reshape(-1, VECTOR_SIDE, 2, VECTOR_SIDE, 2).mean(axis=(2, 4)) / 255.0
    vectors = small.reshape(len(images), -1)
    rows: dict[str, list[str]] = {"train": [], "eval": []}
    for label in range(10):
        index = np.flatnonzero(labels == label)[: train_per_label + eval_per_label]
        for n, i in enumerate(index):
            row = " ".join(f"{x:.3f}" for x in vectors[i]) + f",class-{label}"
            rows["train" if n < train_per_label else "eval"].append(row)
    return _write_rows(folder, "vectors", rows)


def _write_rows(folder: Path, name: str, rows: dict[str, list[str]]) -> tuple[Path, Path]:
    paths = []
    for split in ("train", "eval"):
        path = folder / f"{name}-{split}.csv"
        path.write_text("\n".join(rows[split]) + "\n", encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


def fit_options(family: str) -> dict:
    """What the data set needs of the run (not training settings): labeled rows, and the
    MLP's input size."""
    options = {"data_options": {"is_labeled": True}}
    if family == "mlp":
        options["model_options"] = {"input_size": VECTOR_SIDE * VECTOR_SIDE}
    return options


def run_one(family: str, train: Path, evaluation: Path, output: Path, settings: dict) -> dict:
    """One `finetuner.fit` run; its before/after metrics and wall time. The pipeline's log
    (its steps are child processes) goes to output.log, not the terminal."""
    import finetuner

    start = time.monotonic()
    with open(f"{output}.log", "w") as log, _redirected(log):
        run = finetuner.fit(
            family,
            str(train),
            output=str(output),
            eval_data=str(evaluation),
            **fit_options(family),
            **settings,
        )
    return {"metrics": run.metrics(), "seconds": round(time.monotonic() - start, 1)}


@contextmanager
def _redirected(log):
    """stdout and stderr of this process and its children to `log`, at the descriptors."""
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(log.fileno(), 1), os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        os.close(saved[0]), os.close(saved[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated")
    parser.add_argument(
        "--settings",
        default="former,defaults",
        help="comma-separated: former (5e-5, 1 epoch), defaults (the family's own: auto)",
    )
    parser.add_argument("--learning-rate", type=float, help="run this rate instead of --settings")
    parser.add_argument("--epochs", type=int, help="run these epochs instead of --settings")
    parser.add_argument("--data-dir", type=Path, help="build the data sets here (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the data sets and outputs")
    args = parser.parse_args(argv)

    families = [f for f in args.families.split(",") if f]
    unknown = set(families) - set(FAMILIES)
    if unknown:
        parser.error(f"unknown family {', '.join(sorted(unknown))}; valid: {', '.join(FAMILIES)}")
    if args.learning_rate is not None or args.epochs is not None:
        given = {"learning_rate": args.learning_rate, "epochs": args.epochs}
        given = {k: v for k, v in given.items() if v is not None}
        settings = {"given": {f: given for f in families}}
    else:
        names = [s for s in args.settings.split(",") if s]
        bad = set(names) - {"former", "defaults"}
        if bad:
            parser.error(f"unknown setting {', '.join(sorted(bad))}; valid: former, defaults")
        settings = {
            name: {f: (FORMER if name == "former" else {}) for f in families} for name in names
        }

    folder = args.data_dir or Path(tempfile.mkdtemp(prefix="default-learning-"))
    folder.mkdir(parents=True, exist_ok=True)
    builders = {"mlp": build_vectors, "pointnet-base": build_meshes}
    data = {family: builders[family](folder) for family in families}
    results = []
    try:
        for name, per_family in settings.items():
            for family in families:
                chosen = per_family[family]
                output = folder / "runs" / f"{family}-{name}"
                output.parent.mkdir(exist_ok=True)
                shutil.rmtree(output, ignore_errors=True)
                outcome = run_one(family, *data[family], output, chosen)
                results.append({"family": family, "setting": name, **chosen, **outcome})
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    finally:
        if not args.keep and args.data_dir is None:
            shutil.rmtree(folder, ignore_errors=True)
    print_table(results)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def print_table(results: list[dict]) -> None:
    from finetuner.catalogue import get_entry
    from finetuner.models.registry import get_family

    print(
        "| family | setting | learning rate | epochs | nDCG@10 before | nDCG@10 after "
        "| MRR before | MRR after | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        before, after = r["metrics"]["before"], r["metrics"]["after"]
        family = get_family(get_entry(r["family"]).family)  # what auto resolves to
        lr = r.get("learning_rate", family.learning_rate)
        epochs = r.get("epochs", family.epochs)
        print(
            f"| {r['family']} | {r['setting']} | {lr:g} | {epochs} "
            f"| {before['ndcg@10']:.3f} | {after['ndcg@10']:.3f} "
            f"| {before['mrr@10']:.3f} | {after['mrr@10']:.3f} | {r['seconds']:.0f} |"
        )


if __name__ == "__main__":
    sys.exit(main())
