import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import psutil
import pytest

from finetuner.errors import FinetunerError
from finetuner.io import s3server


def _listening_addresses(pid: int) -> set[tuple[str, int]]:
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(pid).connections(kind="inet")  # net_connections from psutil 6
        if c.status == psutil.CONN_LISTEN
    }


def test_serves_on_loopback_only(s3_server):
    assert urlparse(s3_server.endpoint).hostname == "127.0.0.1"
    # Every service's HTTP and gRPC port, on the ports we chose, and nothing on another address
    # (weed opens its services' ports one after another, the admin's after S3 answers).
    expected = {("127.0.0.1", port) for pair in s3_server.ports.values() for port in pair}
    for _ in range(100):
        listening = _listening_addresses(s3_server.process.pid)
        if listening >= expected:
            break
        time.sleep(0.1)
    assert listening == expected
    assert s3_server.env() == {
        "AWS_ENDPOINT_URL": s3_server.endpoint,
        "AWS_ACCESS_KEY_ID": "finetuner",
        "AWS_SECRET_ACCESS_KEY": "finetuner-local-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def test_data_persists_across_restarts(tmp_path):
    data_dir = tmp_path / "data"
    with s3server.start(data_dir, access_key="k1", secret_key="secret-one") as server:
        server.create_bucket("persist")
        server.create_bucket("persist")  # idempotent
        server.client().put_object(Bucket="persist", Key="a/b.txt", Body=b"kept")
        first_endpoint = server.endpoint
    assert server.process.returncode is not None  # stopped by the with block

    with s3server.start(data_dir, access_key="k1", secret_key="secret-one") as server:
        assert server.endpoint != first_endpoint  # fresh ports, same data
        body = server.client().get_object(Bucket="persist", Key="a/b.txt")["Body"].read()
        assert body == b"kept"
        assert "weed" in (data_dir / "weed.log").read_text(errors="replace").lower()


def test_stop_ends_process(tmp_path):
    server = s3server.start(tmp_path / "data")
    pid, port = server.process.pid, server.ports["s3"][0]
    server.stop()
    assert server.process.returncode == 0  # SIGTERM is a clean shutdown for weed
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    server.stop()  # a second stop is harmless


def test_port_in_use_is_reported(s3_server, tmp_path):
    port = s3_server.ports["s3"][0]
    with pytest.raises(FinetunerError, match=f"port {port} on 127.0.0.1 is in use"):
        s3server.start(tmp_path / "data", s3_port=port)


def test_retries_when_a_chosen_port_is_taken(s3_server, tmp_path, monkeypatch):
    # The first choice includes a port in use, as if another process took it after the check.
    choose_ports = s3server._choose_ports
    choices = []

    def first_choice_taken(s3_port):
        ports = choose_ports(s3_port)
        if not choices:
            ports["filer"] = s3_server.ports["filer"]
        choices.append(ports)
        return ports

    monkeypatch.setattr(s3server, "_choose_ports", first_choice_taken)
    with s3server.start(tmp_path / "data") as server:
        server.create_bucket("works")
    assert len(choices) == 2
    # The failed attempt left the sockets of the server that holds that port alone.
    filer_port = s3_server.ports["filer"][0]
    assert Path(f"/tmp/seaweedfs-filer-{filer_port}.sock").exists()
    assert "is not available" in (tmp_path / "data" / "weed.log").read_text(errors="replace")


def test_startup_failure_shows_log(tmp_path, monkeypatch):
    # A binary that exits at once stands in for a weed that cannot start.
    fake = tmp_path / "weed"
    fake.write_text("#!/bin/sh\necho 'fatal: cannot open data dir' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(s3server, "weed_binary", lambda: str(fake))
    with pytest.raises(FinetunerError, match="exited with status 3(.|\n)*cannot open data dir"):
        s3server.start(tmp_path / "data")


def test_main_prints_exports(tmp_path):
    # Run the entry point as a user would, then stop it with SIGTERM.
    command = [sys.executable, "-m", "finetuner", "s3-server", "--data-dir", str(tmp_path / "d")]
    command += ["--port", "0", "--bucket", "demo"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("Press Ctrl-C"):
            break
    process.terminate()
    assert process.wait(timeout=30) == 0
    output = "".join(lines)
    assert "export AWS_ENDPOINT_URL=http://127.0.0.1:" in output
    assert "export AWS_ACCESS_KEY_ID=finetuner" in output
    assert "buckets: demo" in output
