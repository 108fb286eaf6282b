import os
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from finetuner.errors import FinetunerError
from finetuner.io import storage

# ---------------------------------------------------------------- URIs


def test_join_and_split():
    assert storage.join("s3://bkt", "a", "b.txt") == "s3://bkt/a/b.txt"
    assert (
        storage.join("s3://bkt/models/", "/run1/", "model.onnx")
        == "s3://bkt/models/run1/model.onnx"
    )
    assert storage.join("/data/out/", "x/y", "") == "/data/out/x/y"
    assert storage.join("file:///data", "z") == "file:///data/z"
    assert storage.split_s3("s3://bkt/a/b.txt") == ("bkt", "a/b.txt")
    assert storage.split_s3("s3://bkt") == ("bkt", "")
    assert storage.is_s3("s3://bkt/k") and not storage.is_s3("/tmp/s3://x")
    with pytest.raises(FinetunerError, match="not an S3 URI"):
        storage.split_s3("/local/path")
    for bad in ("s3://", "s3:///key", "s3://my bucket/k"):
        with pytest.raises(FinetunerError, match="expected s3://bucket/key"):
            storage.split_s3(bad)


@pytest.mark.parametrize(
    "uri, message",
    [
        ("s3://", "names no bucket"),
        ("s3:///data.csv", "names no bucket"),
        ("s3://ab/x", "'ab' is not a valid bucket name"),
        ("s3://My_Bucket/x", "'My_Bucket' is not a valid bucket name"),
        ("s3://bucket-/x", "'bucket-' is not a valid bucket name"),
        ("s3://a..b/x", "'a..b' is not a valid bucket name"),
        ("s3://192.168.1.1/x", "'192.168.1.1' is not a valid bucket name"),
        ("s3:/bucket/x", "is not a valid URI"),
        ("S3://bucket/x", "is not a valid URI"),
        ("s3:bucket/x", "is not a valid URI"),
        ("s3:", "is not a valid URI"),
        ("s3a://bucket/x", "is not a valid URI"),
        ("gs://bucket/x", "is not a valid URI"),
        ("file:/data/x", "is not a valid URI"),
        ("s3://bucket", "names no key"),
        ("s3://bucket/", "names no key"),
        ("", "empty path"),
    ],
)
def test_check_uri_names_the_parameter(uri, message):
    with pytest.raises(FinetunerError, match=f"^parameter output_uri: .*{message}"):
        storage.check_uri(uri, "output_uri")


def test_check_uri_accepts_what_it_should(tmp_path):
    for uri in ("s3://bucket/k", "s3://my.bucket-1/a/b.csv", "runs/x", "my:file.csv",
                f"file://{tmp_path}/x", str(tmp_path / "s3:" / "x"), "/tmp/s3://x"):  # fmt: skip
        assert storage.check_uri(uri, "output_uri") == uri
    # A folder that is read, or a mirror, may be a whole bucket.
    assert storage.check_uri("s3://bucket", "weights", need_key=False) == "s3://bucket"


def test_no_storage_call_writes_a_near_miss_to_a_local_folder(tmp_path, monkeypatch):
    # `s3://` without a bucket once became a local folder named `s3:`.
    monkeypatch.chdir(tmp_path)
    for uri in ("s3:/bucket/x.txt", "S3://bucket/x.txt", "s3:x.txt", "s3://"):
        with pytest.raises(FinetunerError, match="expected s3://bucket/key"):
            storage.write_text(storage.join(uri, "a.txt"), "x")
    assert list(tmp_path.iterdir()) == []


def test_kind_and_check_file(tmp_path, s3):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.csv").write_text("q,d\n")
    assert storage.kind(tmp_path / "data") == "folder"
    assert storage.kind(tmp_path / "data" / "a.csv") == "file"
    assert storage.kind(tmp_path / "nope") is None
    with pytest.raises(FinetunerError, match=r"parameter train_data: .*data is a folder"):
        storage.check_file(str(tmp_path / "data"), "train_data")
    with pytest.raises(FinetunerError, match=r"parameter eval_data: .*nope does not exist"):
        storage.check_file(str(tmp_path / "nope"), "eval_data")
    storage.write_text(f"s3://{s3}/data/a.csv", "q,d\n")
    assert storage.check_file(f"s3://{s3}/data/a.csv", "train_data")
    with pytest.raises(FinetunerError, match=f"parameter train_data: s3://{s3}/data is a folder"):
        storage.check_file(f"s3://{s3}/data", "train_data")
    assert storage.kind(f"s3://{s3}/data/") == "folder"
    with pytest.raises(FinetunerError, match="does not exist"):
        storage.check_file(f"s3://{s3}/dat", "train_data")


def test_check_writable(tmp_path, s3, s3_server):
    (tmp_path / "file").write_text("x")
    with pytest.raises(FinetunerError, match="file is a file; expected a folder"):
        storage.check_writable(str(tmp_path / "file"), "output_uri", folder=True)
    with pytest.raises(FinetunerError, match=r"cannot make the folder .*: .*file is a file"):
        storage.check_writable(str(tmp_path / "file" / "sub"), "output_uri", folder=True)
    with pytest.raises(FinetunerError, match="is a folder; expected a file"):
        storage.check_writable(str(tmp_path), "summary_json", folder=False)
    storage.check_writable(str(tmp_path / "new" / "deeper"), "output_uri", folder=True)
    # Root writes through permissions, but not into /proc.
    locked = tmp_path / "locked" if os.geteuid() != 0 else Path("/proc")
    locked.mkdir(mode=0o500, exist_ok=True)
    with pytest.raises(FinetunerError, match=f"{locked} is not writable"):
        storage.check_writable(str(locked / "out"), "output_uri", folder=True)
    storage.check_writable(f"s3://{s3}/out", "output_uri", folder=True)
    with pytest.raises(FinetunerError, match="bucket 'no-such-bucket-x' does not exist"):
        storage.check_writable("s3://no-such-bucket-x/out", "output_uri", folder=True)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_create_exclusive_lets_exactly_one_writer_win(where, tmp_path, s3):
    base = str(tmp_path) if where == "local" else f"s3://{s3}"
    uri = storage.join(base, "out", "claim.json")

    def create(i: int) -> bool:
        return storage.create_exclusive(uri, f"writer {i}".encode())

    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(create, range(8)))
    assert won.count(True) == 1
    assert storage.read_text(uri) == f"writer {won.index(True)}"
    assert not storage.create_exclusive(uri, b"late")
    if where == "local":  # no staged file is left beside it
        assert [p.name for p in (tmp_path / "out").iterdir()] == ["claim.json"]


# ---------------------------------------------------------------- local paths


def test_local_round_trip(tmp_path):
    root = tmp_path / "out"
    assert storage.is_empty_prefix(root)  # a folder that does not exist is empty
    storage.write_text(root / "a" / "b" / "c.txt", "héllo")  # creates the parent folders
    storage.write_bytes(f"file://{root}/d.bin", b"\x00\x01")
    assert storage.read_text(str(root / "a/b/c.txt")) == "héllo"
    assert storage.read_bytes(root / "d.bin") == b"\x00\x01"
    assert storage.exists(root / "d.bin") and not storage.exists(root / "nope")
    assert storage.list_files(root) == [str(root / "a/b/c.txt"), str(root / "d.bin")]
    assert not storage.is_empty_prefix(root)

    copy = storage.download_dir(root, tmp_path / "copy")
    assert storage.read_text(copy / "a/b/c.txt") == "héllo"
    storage.upload_dir(root, str(tmp_path / "up"), exclude=("*.bin",))
    assert storage.list_files(tmp_path / "up") == [str(tmp_path / "up/a/b/c.txt")]
    assert storage.local_copy(f"file://{root}/d.bin") == root / "d.bin"


def test_local_errors(tmp_path):
    missing = tmp_path / "missing.txt"
    with pytest.raises(FinetunerError, match=f"{missing} does not exist"):
        storage.read_bytes(missing)
    with pytest.raises(FinetunerError, match="missing.txt does not exist"):
        storage.upload_file(missing, "s3://bkt/k")
    with pytest.raises(FinetunerError, match="does not exist"):
        storage.local_copy(missing)
    with pytest.raises(FinetunerError, match="no files under"):
        storage.download_dir(tmp_path / "empty", tmp_path / "dest")
    (tmp_path / "latin1.txt").write_bytes("é".encode("latin-1"))
    with pytest.raises(FinetunerError, match="not valid utf-8"):
        storage.read_text(tmp_path / "latin1.txt")


# ---------------------------------------------------------------- S3


def test_s3_round_trip(s3):
    base = f"s3://{s3}/run"
    assert storage.is_empty_prefix(base)
    storage.write_text(storage.join(base, "notes.txt"), "héllo\n")
    storage.write_bytes(storage.join(base, "sub", "x.bin"), b"\x00\xff")
    storage.write_bytes(f"s3://{s3}/run2/other.bin", b"sibling")  # shares the prefix "run"
    assert storage.read_text(f"{base}/notes.txt") == "héllo\n"
    assert storage.read_bytes(f"{base}/sub/x.bin") == b"\x00\xff"
    assert storage.exists(f"{base}/notes.txt")
    assert not storage.exists(f"{base}/absent.txt")
    assert not storage.is_empty_prefix(base)
    assert storage.list_files(base) == [f"{base}/notes.txt", f"{base}/sub/x.bin"]
    assert storage.list_files(f"{base}/") == storage.list_files(base)
    assert len(storage.list_files(f"s3://{s3}")) == 3


def test_list_files_paginates(s3):
    # More keys than the 1000 that one ListObjectsV2 page holds.
    uris = [f"s3://{s3}/many/{i:05d}.txt" for i in range(1100)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda uri: storage.write_bytes(uri, uri.encode()), uris))
    assert storage.list_files(f"s3://{s3}/many") == uris


def test_multipart_round_trip(s3, tmp_path, monkeypatch):
    # 5 MiB is the smallest part S3 allows; 12 MiB then makes three parts.
    monkeypatch.setattr(storage, "MULTIPART_THRESHOLD", 5 * 1024 * 1024)
    monkeypatch.setattr(storage, "MULTIPART_CHUNKSIZE", 5 * 1024 * 1024)
    data = os.urandom(12 * 1024 * 1024)
    (tmp_path / "big.bin").write_bytes(data)
    uri = f"s3://{s3}/big/big.bin"
    storage.upload_file(tmp_path / "big.bin", uri)

    bucket, key = storage.split_s3(uri)
    head = storage._client().head_object(Bucket=bucket, Key=key)
    assert head["ETag"].strip('"').endswith("-3")  # a multipart object's ETag counts its parts
    assert head["ContentLength"] == len(data)
    downloaded = storage.download_file(uri, tmp_path / "back" / "big.bin")
    assert downloaded.read_bytes() == data


def test_upload_and_download_dir(s3, tmp_path):
    src = tmp_path / "model"
    files = {"config.json": b"{}", "onnx/model.onnx": b"onnx", "a/b/c/deep.txt": b"deep"}
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    (src / "ckpt").mkdir()
    (src / "ckpt" / "step1.pt").write_bytes(b"checkpoint")
    (src / "partial.tmp").write_bytes(b"tmp")

    prefix = f"s3://{s3}/exports/model"
    written = storage.upload_dir(src, prefix, exclude=("ckpt/*", "*.tmp"))
    expected = sorted(f"{prefix}/{name}" for name in files)
    assert sorted(written) == expected
    assert storage.list_files(prefix) == expected

    dest = storage.download_dir(prefix, tmp_path / "back")
    assert {
        p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()
    } == files


def test_local_copy_file_and_folder(s3, tmp_path, monkeypatch):
    storage.write_text(f"s3://{s3}/models/m1/config.json", "{}")
    storage.write_text(f"s3://{s3}/models/m1/weights/w.bin", "w")

    cache = tmp_path / "cache"
    path = storage.local_copy(f"s3://{s3}/models/m1/config.json", cache_dir=cache)
    assert path == cache / s3 / "models/m1/config.json"
    assert path.read_text() == "{}"

    # A folder, with or without the trailing slash; the cache dir can come from the environment.
    monkeypatch.setenv("FINETUNER_CACHE", str(cache))
    for uri in (f"s3://{s3}/models/m1", f"s3://{s3}/models/m1/"):
        folder = storage.local_copy(uri)
        assert folder == cache / s3 / "models/m1"
        assert (folder / "weights/w.bin").read_text() == "w"

    # A second call finds the cached files current and downloads nothing.
    def no_download(*args):
        raise AssertionError("downloaded a cached file again")

    download_file = storage.download_file
    monkeypatch.setattr(storage, "download_file", no_download)
    assert storage.local_copy(f"s3://{s3}/models/m1").is_dir()
    assert storage.local_copy(f"s3://{s3}/models/m1/config.json").read_text() == "{}"

    # A changed object is downloaded again.
    monkeypatch.setattr(storage, "download_file", download_file)
    storage.write_text(f"s3://{s3}/models/m1/config.json", '{"changed": true}')
    changed = storage.local_copy(f"s3://{s3}/models/m1/config.json", cache_dir=cache)
    assert changed.read_text() == '{"changed": true}'


# ---------------------------------------------------------------- S3 errors


def test_missing_key(s3, s3_server, tmp_path):
    uri = f"s3://{s3}/no/such/key.txt"
    expected = f"{uri} does not exist (endpoint {s3_server.endpoint})"
    for call in (
        lambda: storage.read_bytes(uri),
        lambda: storage.download_file(uri, tmp_path / "x"),
        lambda: storage.local_copy(uri, cache_dir=tmp_path),
    ):
        with pytest.raises(FinetunerError) as info:
            call()
        assert str(info.value) == expected
    with pytest.raises(FinetunerError, match=f"no files under s3://{s3}/no/such"):
        storage.download_dir(f"s3://{s3}/no/such", tmp_path / "d")


def test_missing_bucket(s3, s3_server, tmp_path):
    (tmp_path / "f.txt").write_text("x")
    uri = "s3://no-such-bucket-finetuner/k.txt"
    for call in (
        lambda: storage.read_bytes(uri),
        lambda: storage.exists(uri),
        lambda: storage.download_file(uri, tmp_path / "x"),
        lambda: storage.write_bytes(uri, b"x"),  # SeaweedFS must not create the bucket
        lambda: storage.upload_file(tmp_path / "f.txt", uri),
        lambda: storage.list_files("s3://no-such-bucket-finetuner/dir"),
    ):
        with pytest.raises(FinetunerError) as info:
            call()
        message = str(info.value)
        assert "bucket 'no-such-bucket-finetuner' does not exist" in message
        assert s3_server.endpoint in message


@pytest.mark.parametrize("variable", ["AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"])
def test_wrong_credentials(s3, s3_server, monkeypatch, tmp_path, variable):
    uri = f"s3://{s3}/k.txt"
    storage.write_text(uri, "x")
    monkeypatch.setenv(variable, "wrong-value-1234")
    (tmp_path / "f.txt").write_text("x")
    for call in (
        lambda: storage.read_bytes(uri),
        lambda: storage.download_file(uri, tmp_path / "x"),  # a HEAD: a bare 403, no error code
        lambda: storage.upload_file(tmp_path / "f.txt", uri),
    ):
        with pytest.raises(FinetunerError) as info:
            call()
        message = str(info.value)
        assert f"the S3 server at {s3_server.endpoint} refused the credentials" in message
        assert uri in message
        assert "wrong-value-1234" not in message and s3_server.secret_key not in message


def test_no_credentials(s3, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(FinetunerError, match=f"no S3 credentials found while reading s3://{s3}/k"):
        storage.read_bytes(f"s3://{s3}/k")


def test_unreachable_endpoint(s3, monkeypatch):
    with socket.socket() as sock:  # a port that nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setattr(storage, "MAX_ATTEMPTS", 1)
    monkeypatch.setattr(storage, "CONNECT_TIMEOUT", 2)
    with pytest.raises(FinetunerError) as info:
        storage.read_bytes(f"s3://{s3}/k")
    message = str(info.value)
    assert f"cannot reach the S3 endpoint {endpoint}" in message
    assert "AWS_ENDPOINT_URL" in message and f"s3://{s3}/k" in message


def test_bad_endpoint_url(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "127.0.0.1:8333")  # no scheme
    with pytest.raises(FinetunerError, match="AWS_ENDPOINT_URL"):
        storage.read_bytes("s3://bkt/k")
