"""The import contract (pyproject.toml, [tool.importlinter]): layers import downward only, and
no modules or packages import each other in a cycle."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def installed_layout(folder: Path) -> Path:
    """The package as a wheel installs it: components/ and pipelines/ inside finetuner/
    (pyproject.toml maps them there), so the import graph sees them."""
    package = folder / "finetuner"
    shutil.copytree(ROOT / "src/finetuner", package, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("components", "pipelines"):
        shutil.copytree(ROOT / part, package / part, ignore=shutil.ignore_patterns("__pycache__"))
    return folder


def lint_imports(folder: Path, config: Path):
    code = (
        "import sys; from importlinter.cli import lint_imports_command; "
        "sys.exit(lint_imports_command())"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(config), "--no-cache"],
        cwd=folder,
        env={"PYTHONPATH": str(folder), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_import_contract_holds(tmp_path):
    result = lint_imports(installed_layout(tmp_path), ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_a_broken_layer_is_caught(tmp_path):
    # The contract can fail: storage (io) reaching up into training breaks it.
    folder = installed_layout(tmp_path)
    storage = folder / "finetuner/io/storage.py"
    storage.write_text(
        storage.read_text() + "\n\ndef _up():\n    from finetuner.training import loop\n"
    )
    result = lint_imports(folder, ROOT / "pyproject.toml")
    assert result.returncode == 1
    assert "finetuner.io.storage -> finetuner.training.loop" in result.stdout
