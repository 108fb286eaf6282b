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


def test_s3_server_flags_speak_as_the_cli():
    result = finetuner("s3-server", "--port", "x")
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

    from finetuner.io.tables import print_table

    console = Console(force_terminal=True, color_system=None, width=40, record=True)
    row = ["efficientnet-base", "image-to-image", "EfficientNet B4 pre-trained on ImageNet"]
    print_table("image models", ["name", "task", "description"], [row], out=console)
    lines = console.export_text().splitlines()
    assert lines[:3] == ["image models", "efficientnet-base", "  task: image-to-image"]
    assert all(len(line) <= 40 for line in lines)


class EchoServer:
    """A loopback HTTP server that refuses every request, echoing its headers and path in
    the error body, as some API gateways do."""

    def __enter__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Echo(BaseHTTPRequestHandler):
            def refuse(self):
                body = f"denied {self.command} {self.path}\n{self.headers}".encode()
                self.send_response(401)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_HEAD = refuse

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


TOKEN = "tok-7f3a9c2e51"
PASSWORD = "pw-c0ffee42"


@pytest.mark.parametrize("command", ["submit", "schedule"])
def test_tokens_never_reach_a_message(command, tmp_path):
    with EchoServer() as server:
        args = [command, "--host", f"http://admin:{PASSWORD}@127.0.0.1:{server.port}/"]
        args += ["--experiment", "e", "--token", TOKEN, "train_data=x", "output_uri=y"]
        if command == "schedule":
            args += ["--cron", "0 0 3 * * *"]
        result = finetuner(*args, env={"TMPDIR": str(tmp_path)})
    assert_one_error_line(result, 2)
    assert "401" in result.stderr and "Bearer ***" in result.stderr  # the echo, redacted
    for secret in (TOKEN, PASSWORD):
        assert secret not in result.stdout + result.stderr


def test_the_s3_endpoints_userinfo_never_reaches_a_message(tmp_path):
    with EchoServer() as server:
        env = {
            "AWS_ENDPOINT_URL": f"http://admin:{PASSWORD}@127.0.0.1:{server.port}",
            "AWS_ACCESS_KEY_ID": "key",
            "AWS_SECRET_ACCESS_KEY": "secret-" + TOKEN,
            "AWS_CONFIG_FILE": str(tmp_path / "none"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        }
        result = finetuner("run", "--train-data", "s3://bucket/pairs.csv", env=env)
    assert_one_error_line(result, 2)
    assert f"127.0.0.1:{server.port}" in result.stderr
    for secret in (TOKEN, PASSWORD):
        assert secret not in result.stdout + result.stderr


def test_redact():
    from finetuner.errors import add_secret, redact

    add_secret("user:s3cr3t-pass")
    assert redact("at https://u:p@h.example/x and ftp://tok@h/") == (
        "at https://***@h.example/x and ftp://***@h/"
    )
    assert redact("Basic dXNlcjpzM2NyM3QtcGFzcw== user%3As3cr3t-pass") == "Basic *** ***"
