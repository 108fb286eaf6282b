"""Checks that an installed (non-editable) finetuner is whole: every module of the source tree
is in the installed package and imports, and so do the pipelines' compiled YAML files.

Usage: python images/check_install.py [SOURCE_ROOT]   (default: the repository root)
Runs in the image build and in the tests, against a wheel installed into a folder.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

# Where each installed package's files come from in the source tree (pyproject.toml).
SOURCES = {
    "finetuner": "src/finetuner",
    "finetuner.components": "components",
    "finetuner.pipelines": "pipelines",
}


def missing_files(root: Path) -> list[str]:
    import finetuner

    installed = Path(finetuner.__file__).parent
    missing = []
    for package, folder in SOURCES.items():
        source = root / folder
        target = installed.joinpath(*package.split(".")[1:])
        for path in sorted(source.rglob("*")):
            if path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts:
                if not (target / path.relative_to(source)).is_file():
                    missing.append(f"{package}: {path.relative_to(root)}")
    return missing


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parents[1]).resolve()
    missing = missing_files(root)
    if missing:
        print(
            "error: the installed finetuner lacks files of the source tree (add their "
            "packages to pyproject.toml):\n  " + "\n  ".join(missing),
            file=sys.stderr,
        )
        return 1
    modules = []
    for package, folder in SOURCES.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = path.relative_to(root / folder).with_suffix("").parts
            if parts[-1] == "__main__":  # importing it would run the CLI
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules.append(".".join((package, *parts)))
    for name in modules:
        importlib.import_module(name)
    print(f"installed finetuner is whole: {len(modules)} modules import")
    return 0


if __name__ == "__main__":
    sys.exit(main())
