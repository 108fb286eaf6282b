"""A real install is whole. The development install is editable and would hide a package
that pyproject.toml leaves out; a wheel, an image or `pip install .` would then fail at the
first import of it. So: build the wheel, install it into a folder, and check it there with
the same script that checks the step images' install."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_holds_every_module_of_the_source_tree(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("finetuner-*.whl")
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "--target",
         str(site), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    check = subprocess.run(
        [sys.executable, str(ROOT / "images" / "check_install.py"), str(ROOT)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={"PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert check.returncode == 0, check.stderr[-3000:]
    assert "installed finetuner is whole" in check.stdout


def test_the_check_finds_a_module_missing_from_an_install(tmp_path):
    """The check itself fails on an install that lacks a subpackage."""
    import shutil

    site = tmp_path / "site"
    shutil.copytree(ROOT / "src" / "finetuner", site / "finetuner")
    shutil.copytree(ROOT / "components", site / "finetuner" / "components")
    shutil.copytree(ROOT / "pipelines", site / "finetuner" / "pipelines")
    shutil.rmtree(site / "finetuner" / "models")
    check = subprocess.run(
        [sys.executable, str(ROOT / "images" / "check_install.py"), str(ROOT)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={"PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert check.returncode == 1
    assert "finetuner: src/finetuner/models/__init__.py" in check.stderr
