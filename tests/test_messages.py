"""What users read: one `error: ...` line for every failure, tables that a pipe can search,
no secrets in any message."""

import os
import re
import subprocess
import sys

import pytest

from finetuner.catalogue import describe_models


def finetuner(*args, env=None, code=None, timeout=120):
    """`python -m finetuner ARGS`, or the Python `code` run as a script."""
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "finetuner"]
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def assert_one_error_line(result, status):
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: "), result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--train-data", "x.csv", "--epochs", "abc"],
        ["nonsense-command"],
        ["describe-models", "--no-such-flag"],
        ["s3-server", "--port", "eighty"],
        ["compile", "--output-dir", "{file}/sub"],
    ],
)
def test_bad_input_is_one_error_line_with_status_2(args, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    result = finetuner(*(a.replace("{file}", str(afile)) for a in args))
    assert_one_error_line(result, 2)


def test_an_internal_fault_is_one_line_and_a_log(tmp_path):
    # A fault of ours, injected into a command: the user gets its type and message, and
    # where the traceback is; the traceback is in that file.
    code = (
        "import sys, finetuner.cli as cli\n"
        "def broken(args):\n"
        "    raise KeyError('column 7')\n"
        "cli.describe_models_command = broken\n"
        "sys.exit(cli.main(['describe-models']))\n"
    )
    result = finetuner(code=code, env={"TMPDIR": str(tmp_path)})
    assert_one_error_line(result, 1)
    line = result.stderr.strip()
    match = re.fullmatch(
        r"error: internal error: KeyError: 'column 7' \(the full traceback is in (.+)\)", line
    )
    assert match, line
    log = match.group(1)
    assert os.path.dirname(log) == str(tmp_path)
    text = open(log).read()
    assert "Traceback" in text and "in broken" in text


def test_python_m_s3server_speaks_as_the_cli():
    result = finetuner("--port", "x", code="import sys; from finetuner.s3server import main; "
                       "sys.exit(main())")  # fmt: skip
    assert_one_error_line(result, 2)
    assert "argument --port: invalid int value" in result.stderr


@pytest.mark.parametrize("command", [["describe-models"], ["list-model-options", "mlp"]])
def test_piped_tables_never_wrap_a_name_nor_colour_it(command):
    result = finetuner(*command, env={"COLUMNS": "40", "FORCE_COLOR": ""})
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout
    first_cells = {
        line.split("│")[1].strip() for line in result.stdout.splitlines() if line.startswith("│")
    }
    if command[0] == "describe-models":
        assert first_cells == {entry.name for entry in describe_models()}
        grep = [line for line in result.stdout.splitlines() if "efficientnet-base" in line]
        assert len(grep) == 1 and "EfficientNet B4" in grep[0]
    else:
        assert {"input_size", "hidden_sizes", "activation"} <= first_cells


def test_a_narrow_terminal_gets_a_block_per_row():
    from rich.console import Console

    from finetuner.tables import print_table

    console = Console(force_terminal=True, color_system=None, width=40, record=True)
    row = ["efficientnet-base", "image-to-image", "EfficientNet B4 pre-trained on ImageNet"]
    print_table("image models", ["name", "task", "description"], [row], out=console)
    lines = console.export_text().splitlines()
    assert lines[:3] == ["image models", "efficientnet-base", "  task: image-to-image"]
    assert all(len(line) <= 40 for line in lines)
