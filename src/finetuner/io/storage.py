"""One API over `s3://bucket/key` URIs and local paths, used by every pipeline step.

boto3 does the S3 work. It takes the endpoint from AWS_ENDPOINT_URL and the credentials from
the usual AWS variables, so a local run against SeaweedFS and a cluster run against real S3
differ only in their environment. Every failure becomes a FinetunerError that names the URI and,
for S3, the endpoint, since "403" alone does not tell a user which server refused what.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from finetuner.errors import FinetunerError, redact

# Files above the threshold travel as parallel multipart transfers. Module constants, so that a
# test can lower them; they are read at every call.
MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNKSIZE = 16 * 1024 * 1024
MAX_CONCURRENCY = 8
# Retries cover a busy or restarting server; the timeouts keep a dead endpoint from hanging a step.
MAX_ATTEMPTS = 5
CONNECT_TIMEOUT = 10
READ_TIMEOUT = 60

_clients: dict[tuple, object] = {}
_clients_lock = threading.Lock()

# Error codes by which S3 servers refuse credentials ("403" is what a HEAD request gets).
_REFUSED = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "InvalidToken",
    "ExpiredToken",
    "403",
    "Forbidden",
}
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}


# ---------------------------------------------------------------- URIs


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


# S3's rules for bucket names (those of buckets created since 2018; path-style addressing).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IP = re.compile(r"\d+\.\d+\.\d+\.\d+")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
# Schemes that look like S3 but are not ours to guess at: s3a/s3n are Hadoop's.
_S3_LOOKALIKES = ("s3", "s3a", "s3n")


def _parse(uri: str | os.PathLike, need_key: bool = False) -> tuple[str | None, str]:
    """The one parser of URIs: (bucket, key) of `s3://bucket/key`, or (None, path) of a local
    path (`file://` allowed). A near miss (`s3:/x`, `S3://b`, `s3:b`, `gs://b`) is an error,
    not a local folder of that name; so is an empty key when `need_key`."""
    text = str(uri)
    if text.startswith("s3://"):
        bucket, _, key = text[len("s3://") :].partition("/")
        if not bucket:
            raise FinetunerError(f"{text!r} names no bucket; expected s3://bucket/key")
        if not _BUCKET.fullmatch(bucket) or ".." in bucket or _IP.fullmatch(bucket):
            raise FinetunerError(
                f"{text!r}: {bucket!r} is not a valid bucket name (3-63 lowercase letters, "
                "digits, dots and hyphens, starting and ending with a letter or digit); "
                "expected s3://bucket/key"
            )
        if need_key and not key.strip("/"):
            raise FinetunerError(f"{text!r} names no key in the bucket; expected s3://{bucket}/key")
        return bucket, key
    if text.startswith("file://"):
        text = text[len("file://") :]
    else:
        scheme = _SCHEME.match(text.lstrip())
        if scheme and (scheme[1].lower() in (*_S3_LOOKALIKES, "file") or "://" in text):
            raise FinetunerError(
                f"{text!r} is not a valid URI: expected s3://bucket/key (lowercase s3, two "
                "slashes) or a local path"
            )
    if need_key and not text.strip():
        raise FinetunerError("an empty path; expected s3://bucket/key or a local path")
    return None, text


def check_uri(uri: str | os.PathLike, parameter: str, need_key: bool = True) -> str:
    """`uri` as text, once it parses (see _parse); the error names `parameter`. Every
    parameter that takes a URI goes through here."""
    try:
        _parse(uri, need_key)
    except FinetunerError as error:
        raise FinetunerError(f"parameter {parameter}: {error}.") from None
    return str(uri)


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> ("bucket", "some/key"); the key may be empty."""
    if not is_s3(uri):
        raise FinetunerError(f"{uri!r} is not an S3 URI; expected s3://bucket/key")
    bucket, key = _parse(uri)
    return bucket, key


def join(uri: str | os.PathLike, *parts: str) -> str:
    """Append path parts to a URI or local path, with exactly one '/' between them."""
    result = str(uri)
    for part in parts:
        part = str(part).strip("/")
        if part:
            result = result.rstrip("/") + "/" + part
    return result


def parent(uri: str | os.PathLike) -> str:
    """The folder a file URI is in: `s3://bkt/data/x.csv` -> `s3://bkt/data`."""
    text = str(uri).rstrip("/")
    if is_s3(text):
        return text.rsplit("/", 1)[0]
    return str(_local(text).parent)


def local_path(uri: str | os.PathLike) -> Path:
    """The path of a local URI (a path, or file://path)."""
    return Path(_parse(uri)[1]).expanduser()


_local = local_path


def _folder_key(key: str) -> str:
    """The key prefix of everything "inside" key, so that `data` does not match `data2/x`."""
    return key if not key or key.endswith("/") else key + "/"


def _s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


# ---------------------------------------------------------------- the S3 client


def _client():
    """A client per environment, so that tests (or a step) that change AWS_* get a fresh one."""
    env_key = tuple(
        os.environ.get(name)
        for name in (
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3",
            "AWS_ACCESS_KEY_ID",
            "AWS_PROFILE",
            "AWS_DEFAULT_REGION",
            "AWS_REGION",
        )
    )
    # A changed secret must also give a new client; keep a digest of it, not the secret itself.
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "") + os.environ.get("AWS_SESSION_TOKEN", "")
    settings = (MAX_ATTEMPTS, CONNECT_TIMEOUT, READ_TIMEOUT)
    # The process id too: a forked DataLoader worker must not share the parent's open
    # connections, so it makes its own client.
    cache_key = (*env_key, hashlib.sha256(secret.encode()).hexdigest(), *settings, os.getpid())
    with _clients_lock:
        client = _clients.get(cache_key)
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                s3={"addressing_style": "path"},  # SeaweedFS (and MinIO) need path-style URLs
                retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
                connect_timeout=CONNECT_TIMEOUT,
                read_timeout=READ_TIMEOUT,
                # A folder moves MAX_CONCURRENCY files at once, each in up to MAX_CONCURRENCY
                # parts: one shared client needs that many connections, or urllib3 drops some.
                max_pool_connections=MAX_CONCURRENCY * MAX_CONCURRENCY,
            )
            try:
                # A new session re-reads the environment; boto3's default one caches credentials.
                client = boto3.session.Session().client("s3", config=config)
            except ValueError as error:  # e.g. an endpoint URL without http://
                endpoint = os.environ.get("AWS_ENDPOINT_URL")
                raise FinetunerError(
                    redact(
                        f"cannot create an S3 client ({error}); check AWS_ENDPOINT_URL={endpoint!r}"
                    )
                ) from error
            _clients[cache_key] = client
    return client


def _endpoint() -> str:
    """The endpoint, as messages show it: without userinfo."""
    try:
        return redact(_client().meta.endpoint_url)
    except Exception:
        return redact(os.environ.get("AWS_ENDPOINT_URL") or "the default AWS endpoint")


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=MULTIPART_THRESHOLD,
        multipart_chunksize=MULTIPART_CHUNKSIZE,
        max_concurrency=MAX_CONCURRENCY,
    )


def _bucket_missing(bucket: str) -> bool:
    """True only if the server confirms that the bucket does not exist."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        _client().head_bucket(Bucket=bucket)
    except ClientError as e:
        return e.response["Error"]["Code"] in ("404", "NoSuchBucket", "NotFound")
    except BotoCoreError:
        return False
    return False


@contextmanager
def _s3_errors(action: str, uri: str) -> Iterator[None]:
    """Turn botocore's exceptions into FinetunerErrors that say what to fix."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    try:
        yield
    except FinetunerError:
        raise
    except (ClientError, BotoCoreError, S3UploadFailedError) as error:
        # The transfer manager wraps the real error of a failed upload.
        if isinstance(error, S3UploadFailedError) and error.__context__ is not None:
            error = error.__context__
        endpoint = _endpoint()
        bucket = split_s3(uri)[0]
        if isinstance(error, (NoCredentialsError, PartialCredentialsError)):
            message = (
                f"no S3 credentials found while {action} {uri}: set AWS_ACCESS_KEY_ID and "
                f"AWS_SECRET_ACCESS_KEY (endpoint {endpoint})"
            )
        elif isinstance(error, (EndpointConnectionError, ConnectTimeoutError)):
            message = (
                f"cannot reach the S3 endpoint {endpoint} while {action} {uri}: check "
                "AWS_ENDPOINT_URL and that the server is running"
            )
        elif isinstance(error, ClientError):
            code = error.response.get("Error", {}).get("Code", "")
            if code == "NoSuchBucket" or (code in _NOT_FOUND and _bucket_missing(bucket)):
                message = (
                    f"bucket '{bucket}' does not exist at endpoint {endpoint} "
                    f"(while {action} {uri})"
                )
            elif code in _NOT_FOUND:
                message = f"{uri} does not exist (endpoint {endpoint})"
            elif code in _REFUSED:
                message = (
                    f"the S3 server at {endpoint} refused the credentials in "
                    f"AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY ({code}) while {action} {uri}"
                )
            else:
                message = f"S3 error while {action} {uri} at endpoint {endpoint}: {error}"
        else:
            message = f"S3 error while {action} {uri} at endpoint {endpoint}: {error}"
        raise FinetunerError(redact(message)) from error


@contextmanager
def _local_errors(action: str, path: str | os.PathLike) -> Iterator[None]:
    try:
        yield
    except FileNotFoundError as error:
        missing = error.filename or path
        raise FinetunerError(f"{missing} does not exist (while {action} {path})") from error
    except OSError as error:
        raise FinetunerError(f"error while {action} {path}: {error}") from error


def _iter_objects(bucket: str, prefix: str, uri: str) -> Iterator[dict]:
    """Every object under `prefix`, page by page (ListObjectsV2 returns 1000 at most)."""
    with _s3_errors("listing", uri):
        pages = _client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith("/"):  # skip "folder" marker objects
                    yield obj


# ---------------------------------------------------------------- reading and writing


def exists(uri: str | os.PathLike) -> bool:
    """Whether the object or local file exists. A missing bucket is an error, not False."""
    if not is_s3(uri):
        return _local(uri).is_file()
    from botocore.exceptions import ClientError

    bucket, key = split_s3(uri)
    with _s3_errors("checking", uri):
        try:
            _client().head_object(Bucket=bucket, Key=key)
        except ClientError as e:
            if e.response["Error"]["Code"] in _NOT_FOUND and not _bucket_missing(bucket):
                return False
            raise
    return True


def read_bytes(uri: str | os.PathLike) -> bytes:
    if not is_s3(uri):
        with _local_errors("reading", uri):
            return _local(uri).read_bytes()
    bucket, key = split_s3(uri)
    with _s3_errors("reading", uri):
        return _client().get_object(Bucket=bucket, Key=key)["Body"].read()


class _S3Stream(io.RawIOBase):
    """An S3 object's body as a file to read once from start to end, so a large data file
    is parsed while it downloads."""

    def __init__(self, body, uri: str):
        self.body, self.uri = body, uri

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        with _s3_errors("reading", self.uri):
            data = self.body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.body.close()
        super().close()


def open_binary(uri: str | os.PathLike):
    """A binary file object reading `uri` once, in order: a local file, or an S3 object
    streamed as it downloads."""
    if not is_s3(uri):
        with _local_errors("reading", uri):
            return _local(uri).open("rb")
    bucket, key = split_s3(uri)
    with _s3_errors("reading", uri):
        body = _client().get_object(Bucket=bucket, Key=key)["Body"]
    return io.BufferedReader(_S3Stream(body, str(uri)), buffer_size=1 << 20)


def read_text(uri: str | os.PathLike, encoding: str = "utf-8") -> str:
    data = read_bytes(uri)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        raise FinetunerError(f"{uri} is not valid {encoding} text: {error}") from error


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    if not is_s3(uri):
        path = _local(uri)
        with _local_errors("writing", uri):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return
    bucket, key = split_s3(uri)
    with _s3_errors("writing", uri):
        _client().put_object(Bucket=bucket, Key=key, Body=data)


def write_text(uri: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    write_bytes(uri, text.encode(encoding))


def list_files(uri_prefix: str | os.PathLike) -> list[str]:
    """Full URIs of all files under a folder (recursively), sorted; [] if there are none."""
    if not is_s3(uri_prefix):
        folder = _local(uri_prefix)
        with _local_errors("listing", uri_prefix):
            return sorted(str(p) for p in folder.rglob("*") if p.is_file())
    bucket, key = split_s3(uri_prefix)
    objects = _iter_objects(bucket, _folder_key(key), str(uri_prefix))
    return sorted(_s3_uri(bucket, obj["Key"]) for obj in objects)


def delete_prefix(uri_prefix: str | os.PathLike) -> None:
    """Delete a folder and everything under it; nothing happens if there is none."""
    if not is_s3(uri_prefix):
        folder = _local(uri_prefix)
        if folder.exists():
            with _local_errors("deleting", uri_prefix):
                shutil.rmtree(folder)
        return
    bucket, key = split_s3(uri_prefix)
    keys = [{"Key": obj["Key"]} for obj in _iter_objects(bucket, _folder_key(key), str(uri_prefix))]
    with _s3_errors("deleting", str(uri_prefix)):
        for start in range(0, len(keys), 1000):  # the most one request may delete
            _client().delete_objects(Bucket=bucket, Delete={"Objects": keys[start : start + 1000]})


def delete(uri: str | os.PathLike) -> None:
    """Delete one file; nothing happens if there is none."""
    if not is_s3(uri):
        with _local_errors("deleting", uri):
            _local(uri).unlink(missing_ok=True)
        return
    bucket, key = split_s3(str(uri))
    with _s3_errors("deleting", str(uri)):
        _client().delete_object(Bucket=bucket, Key=key)


def is_empty_prefix(uri: str | os.PathLike) -> bool:
    """True if no file lies under the folder (or the local folder does not exist)."""
    if not is_s3(uri):
        folder = _local(uri)
        return not folder.is_dir() or not any(p.is_file() for p in folder.rglob("*"))
    bucket, key = split_s3(uri)
    return next(_iter_objects(bucket, _folder_key(key), str(uri)), None) is None


def kind(uri: str | os.PathLike) -> str | None:
    """ "file", "folder" (a local folder, or a prefix with objects under it) or None."""
    if not is_s3(uri):
        path = _local(uri)
        return "file" if path.is_file() else "folder" if path.is_dir() else None
    # A key ending in '/' names a folder (some servers answer HEAD on it for their own
    # folder marker).
    key = split_s3(uri)[1]
    if key and not key.endswith("/") and exists(uri):
        return "file"
    return None if is_empty_prefix(uri) else "folder"


def sha256(uri: str | os.PathLike) -> str:
    """The sha256 of a file, read as a stream; of a folder, the sha256 of its files' relative
    paths and sha256s, one per line, so that any changed, added or removed file changes it."""
    import hashlib

    if kind(uri) == "folder":
        root = str(uri).rstrip("/") + "/"
        lines = "".join(f"{f[len(root) :]} {sha256(f)}\n" for f in list_files(uri))
        return hashlib.sha256(lines.encode()).hexdigest()
    digest = hashlib.sha256()
    with open_binary(uri) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_file(uri: str | os.PathLike, parameter: str = "", expected: str = "a file") -> str:
    """An input file that can be read; anything else is called what it is (a folder, a named
    pipe, a symlink loop), not "missing". `expected` says what the file should be."""
    prefix = f"parameter {parameter}: " if parameter else ""
    uri = check_uri(uri, parameter) if parameter else str(uri)
    if not is_s3(uri):
        check_local_file(uri, prefix, expected)
        return uri
    found = kind(uri)
    if found == "folder":
        raise FinetunerError(f"{prefix}{uri} is a folder; expected {expected}.")
    if found is None:
        raise FinetunerError(f"{prefix}{uri} does not exist.")
    return uri


def check_local_file(uri: str | os.PathLike, prefix: str = "", expected: str = "a file") -> None:
    """A local path that is a regular file this process can read (a named pipe would block
    its reader)."""
    import stat

    path = _local(uri)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FinetunerError(f"{prefix}{uri} does not exist.") from None
    except (OSError, ValueError) as exc:  # a symlink loop, a too long name, a NUL byte
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise FinetunerError(f"{prefix}cannot read {uri} ({reason}).") from None
    if stat.S_ISDIR(info.st_mode):
        raise FinetunerError(f"{prefix}{uri} is a folder; expected {expected}.")
    if not stat.S_ISREG(info.st_mode):
        raise FinetunerError(
            f"{prefix}{uri} is not a regular file (a named pipe, device or socket); "
            f"expected {expected}."
        )
    if not os.access(path, os.R_OK):
        raise FinetunerError(f"{prefix}cannot read {uri} (permission denied).")


def check_writable(uri: str | os.PathLike, parameter: str, folder: bool) -> None:
    """That a file (or with `folder`, a folder) can be made at `uri`: locally, no file stands
    in its way and its nearest existing folder is writable; on S3, that the bucket exists
    (the write itself tells whether the credentials may write)."""
    what = "folder" if folder else "file"
    if is_s3(uri):
        bucket = split_s3(uri)[0]
        with _s3_errors("checking", str(uri)):
            if _bucket_missing(bucket):
                raise FinetunerError(
                    f"parameter {parameter}: bucket '{bucket}' does not exist at endpoint "
                    f"{_endpoint()}."
                )
        return
    path = _local(uri)
    if path.is_dir() and not folder:
        raise FinetunerError(f"parameter {parameter}: {uri} is a folder; expected a file.")
    if path.is_file() and folder:
        raise FinetunerError(f"parameter {parameter}: {uri} is a file; expected a folder.")
    existing = path if path.exists() else path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise FinetunerError(
            f"parameter {parameter}: cannot make the {what} {uri}: {existing} is a file."
        )
    try:  # a probe, not os.access: root passes that on a read-only file system too
        # Named as the claim's files are, so that a concurrent check takes it for one of ours.
        fd, probe = tempfile.mkstemp(prefix=".finetuner-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise FinetunerError(
            f"parameter {parameter}: cannot write the {what} {uri}: {existing} is not "
            f"writable ({error.strerror})."
        ) from None


def create_exclusive(uri: str | os.PathLike, data: bytes) -> bool:
    """Create a file only if none exists, atomically; whether this call created it.

    Locally the file is written beside its name and hard-linked into place (a link fails
    where a file exists), so that no reader sees it half-written. On S3 it is a conditional
    write (If-None-Match: *), which the server refuses when the key exists."""
    if not is_s3(uri):
        path = _local(uri)
        with _local_errors("writing", uri):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, staged = tempfile.mkstemp(prefix=f".{path.name.lstrip('.')}.", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                try:
                    os.link(staged, path)
                except FileExistsError:
                    return False
            finally:
                os.unlink(staged)
        return True
    from botocore.exceptions import ClientError

    bucket, key = split_s3(uri)
    with _s3_errors("writing", str(uri)):
        try:
            _client().put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except ClientError as e:
            # 412: the key exists; 409: another conditional write of it is in flight.
            if e.response["Error"]["Code"] in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
    return True


# ---------------------------------------------------------------- files and folders


def download_file(uri: str | os.PathLike, local_path: str | os.PathLike) -> Path:
    """Copy one file to `local_path`; boto3 writes to a temporary name and renames at the end."""
    local_path = Path(local_path)
    with _local_errors("writing", local_path):
        local_path.parent.mkdir(parents=True, exist_ok=True)
    if not is_s3(uri):
        with _local_errors("copying", uri):
            shutil.copyfile(_local(uri), local_path)
        return local_path
    bucket, key = split_s3(uri)
    with _s3_errors("downloading", uri):
        _client().download_file(bucket, key, str(local_path), Config=_transfer_config())
    return local_path


def upload_file(local_path: str | os.PathLike, uri: str | os.PathLike) -> None:
    """Copy one local file to `uri` (multipart above MULTIPART_THRESHOLD)."""
    local_path = Path(local_path)
    if not local_path.is_file():
        raise FinetunerError(f"{local_path} does not exist or is not a file (uploading to {uri})")
    if not is_s3(uri):
        target = _local(uri)
        with _local_errors("copying", local_path):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local_path, target)
        return
    bucket, key = split_s3(uri)
    with _s3_errors("uploading to", uri):
        _client().upload_file(str(local_path), bucket, key, Config=_transfer_config())


def _download_objects(bucket: str, prefix: str, objects: list[dict], local_dir: Path) -> None:
    """Download listed objects into local_dir, skipping files already here in the same version."""

    def fetch(obj: dict) -> None:
        uri = _s3_uri(bucket, obj["Key"])
        relative = PurePosixPath(obj["Key"][len(prefix) :])
        if relative.is_absolute() or ".." in relative.parts:  # would escape local_dir
            raise FinetunerError(f"refusing to download {uri}: its key leaves the folder")
        target = local_dir / relative
        if not _is_fresh(target, obj["Size"], obj["LastModified"]):
            download_file(uri, target)
            _stamp(target, obj["LastModified"])

    # Threads: a model or data folder is often many small files, each a round trip.
    with ThreadPoolExecutor(MAX_CONCURRENCY) as pool:
        list(pool.map(fetch, objects))


def download_dir(uri_prefix: str | os.PathLike, local_dir: str | os.PathLike) -> Path:
    """Copy every file under a folder URI into `local_dir`, keeping relative paths."""
    local_dir = Path(local_dir)
    if not is_s3(uri_prefix):
        source = _local(uri_prefix)
        if is_empty_prefix(source):
            raise FinetunerError(f"no files under {uri_prefix}")
        with _local_errors("copying", uri_prefix):
            shutil.copytree(source, local_dir, dirs_exist_ok=True)
        return local_dir
    bucket, key = split_s3(uri_prefix)
    prefix = _folder_key(key)
    objects = list(_iter_objects(bucket, prefix, str(uri_prefix)))
    if not objects:
        raise FinetunerError(f"no files under {uri_prefix} (endpoint {_endpoint()})")
    _download_objects(bucket, prefix, objects, local_dir)
    return local_dir


def upload_dir(
    local_dir: str | os.PathLike, uri_prefix: str | os.PathLike, exclude: tuple[str, ...] = ()
) -> list[str]:
    """Copy every file under `local_dir` to the folder URI, keeping relative paths.

    `exclude` holds glob patterns, matched against each file's path relative to `local_dir`
    (e.g. "checkpoints/*") and against its name (e.g. "*.tmp"). Returns the URIs written.
    """
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise FinetunerError(f"{local_dir} is not a folder (uploading to {uri_prefix})")
    files = []
    for path in sorted(local_dir.rglob("*")):
        relative = path.relative_to(local_dir).as_posix()
        skipped = any(
            fnmatch.fnmatch(relative, p) or fnmatch.fnmatch(path.name, p) for p in exclude
        )
        if path.is_file() and not skipped:
            files.append((path, join(uri_prefix, relative)))
    with ThreadPoolExecutor(MAX_CONCURRENCY) as pool:
        list(pool.map(lambda item: upload_file(*item), files))
    return [uri for _, uri in files]


def _is_fresh(path: Path, size: int, last_modified) -> bool:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return False
    return stat.st_size == size and stat.st_mtime == last_modified.timestamp()


def _stamp(path: Path, last_modified) -> None:
    """Give a downloaded file the object's time, so that the next call can skip it."""
    timestamp = last_modified.timestamp()
    os.utime(path, (timestamp, timestamp))


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    from finetuner.io.cachedir import writable

    if os.environ.get("FINETUNER_CACHE"):
        return writable(Path(os.environ["FINETUNER_CACHE"]).expanduser())
    return writable(Path.home() / ".cache" / "finetuner" / "s3")


def local_copy(uri: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local path holding the file or folder at `uri`.

    Local URIs are returned as they are. S3 objects are downloaded to
    `<cache>/<bucket>/<key>`, where the cache is `cache_dir`, else $FINETUNER_CACHE, else
    ~/.cache/finetuner/s3. A URI is a folder if its key ends with '/', or if no object has
    that exact key but some lie under it. Cached files with the object's size and modification
    time are reused, not downloaded again.
    """
    if not is_s3(uri):
        path = _local(uri)
        if not path.exists():
            raise FinetunerError(f"{uri} does not exist")
        return path
    from botocore.exceptions import ClientError

    uri = str(uri)
    bucket, key = split_s3(uri)
    target = _cache_root(cache_dir) / bucket / key.strip("/")
    if key and not key.endswith("/"):
        with _s3_errors("reading", uri):
            try:
                head = _client().head_object(Bucket=bucket, Key=key)
            except ClientError as e:
                # No object with this exact key: it may still be a folder.
                if e.response["Error"]["Code"] not in _NOT_FOUND or _bucket_missing(bucket):
                    raise
                head = None
        if head is not None:
            if not _is_fresh(target, head["ContentLength"], head["LastModified"]):
                download_file(uri, target)
                _stamp(target, head["LastModified"])
            return target
    prefix = _folder_key(key)
    objects = list(_iter_objects(bucket, prefix, uri))
    if not objects:
        raise FinetunerError(f"{uri} does not exist (endpoint {_endpoint()})")
    _download_objects(bucket, prefix, objects, target)
    return target
