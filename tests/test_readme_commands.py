"""Every command README.md shows works as shown: each `finetuner` command's flags are its
parser's, the concrete ones parse, and each `make` target exists (and the Makefile's own
`finetuner` commands parse too)."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from finetuner.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


def commands(lines: list[str], programs=("finetuner", "make")) -> list[str]:
    """The commands in `lines`: backslash continuations and a synopsis's indented
    continuation lines joined to the command they continue."""
    found: list[str] = []
    continued = False
    for line in lines:
        text = line.strip()
        if found and (continued or (line.startswith(" ") and text.startswith("["))):
            found[-1] += " " + text.rstrip("\\").strip()
        elif text.split(" ", 1)[0] in programs and len(text.split()) > 1:
            found.append(text.rstrip("\\").strip())
        else:
            continued = False
            continue
        continued = text.endswith("\\")
    return found


def readme_commands() -> list[str]:
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", (ROOT / "README.md").read_text(), re.M | re.S)
    return [c for block in blocks for c in commands(block.splitlines())]


def makefile_commands() -> list[str]:
    """The Makefile's own `finetuner ...` recipe lines, e.g. `make s3`'s."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    return [re.sub(r"^\t\$\(BIN\)/", "", line) for line in lines if "$(BIN)/finetuner " in line]


FINETUNER = [c for c in readme_commands() + makefile_commands() if c.startswith("finetuner ")]
MAKE = [c for c in readme_commands() if c.startswith("make ")]


def test_the_readme_shows_every_command():
    shown = {command.split()[1] for command in FINETUNER}
    parser = build_parser()
    every = set(parser._subparsers._group_actions[0].choices)
    assert shown == every
    assert {"make run", "make test"} <= set(MAKE)
    assert "s3-server --data-dir .s3data" in " ".join(FINETUNER)  # `make s3`


def is_synopsis(command: str) -> bool:
    """A synopsis (`[--flag N]`, NAME...) rather than a command to run as it is."""
    return bool(re.search(r"\[|\.\.\.|\bURI\b", command))


@pytest.mark.parametrize("command", FINETUNER)
def test_each_finetuner_command_as_shown(command):
    name = command.split()[1]
    help_run = subprocess.run(
        [sys.executable, "-m", "finetuner", name, "--help"], capture_output=True, text=True
    )
    assert help_run.returncode == 0, help_run.stderr
    subparser = build_parser()._subparsers._group_actions[0].choices[name]
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", command))
    assert flags <= set(subparser._option_string_actions), command
    for flag in flags:
        assert flag in help_run.stdout
    if not is_synopsis(command):
        # A concrete example parses whole: its flags, their values and its arguments.
        build_parser().parse_args(shlex.split(command)[1:])


@pytest.mark.parametrize("command", MAKE)
def test_each_make_target_exists(command):
    dry_run = subprocess.run(
        ["make", "-n", *shlex.split(command.split("#")[0])[1:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert dry_run.returncode == 0, dry_run.stderr
