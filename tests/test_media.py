"""finetuner.data.media: URL checks, the media cache (local, S3, HTTP), image and mesh checks.
(Media items in DataLoader workers: tests/test_batches.py.)"""

import io
import os
import socket
import struct
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from conftest import fashion_mnist
from PIL import Image
from pydantic import ValidationError

from finetuner.data import media
from finetuner.data import pairs as data
from finetuner.errors import BadItem, FinetunerError
from finetuner.io import storage

MESHES = Path("/usr/share/assimp/models")  # Debian's assimp-testmodels


@pytest.fixture(autouse=True)
def no_loopback_env(monkeypatch):
    """Loopback stays refused unless a test allows it, whatever the caller's environment."""
    monkeypatch.delenv(media.ALLOW_LOOPBACK_ENV, raising=False)
    media._resolve.cache_clear()
    yield
    media._resolve.cache_clear()


def limits(tmp_path, **changes) -> media.MediaLimits:
    return media.MediaLimits(cache_dir=tmp_path / "cache", **changes)


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def fashion_png(i: int = 0) -> bytes:
    return png_bytes(fashion_mnist(i + 1)[0][i])


def png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header (with a valid checksum) claims another size: a small file
    that would decode into a huge image."""
    data = bytearray(png_bytes(np.zeros((1, 1), np.uint8)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


# ---------------------------------------------------------------- a loopback HTTP server


class Server:
    """An HTTP server on 127.0.0.1 in a thread. `routes` maps a path to (status, headers,
    body); a body that is a callable writes the response itself."""

    def __init__(self):
        self.routes: dict = {}
        self.requests: list[str] = []
        self.stopped_early = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self):
                server.requests.append(self.path)
                status, headers, body = server.routes.get(self.path, (404, {}, b"not here"))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if isinstance(body, bytes):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    body(self.wfile) if callable(body) else self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    server.stopped_early.set()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def http():
    server = Server()
    yield server
    server.stop()


# ---------------------------------------------------------------- limits and URL checks


def test_limits_are_validated_and_loopback_follows_the_environment(monkeypatch):
    assert media.MediaLimits().allow_loopback is False
    monkeypatch.setenv(media.ALLOW_LOOPBACK_ENV, "1")
    assert media.MediaLimits().allow_loopback is True
    with pytest.raises(ValidationError, match="max_file_bytes"):
        media.MediaLimits(max_file_bytes=0)
    with pytest.raises(ValidationError, match="cache_max_bytes .* must be at least"):
        media.MediaLimits(max_file_bytes=100, cache_max_bytes=10)


def test_cache_dir_defaults_to_a_folder_of_finetuner_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("FINETUNER_CACHE", str(tmp_path))
    assert media.MediaLimits().cache_dir == tmp_path / "_media"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a cloud metadata"),
        ("http://169.254.10.20/x.png", "link-local"),
        ("http://[fe80::1]/x.png", "link-local"),
        ("http://[fd00:ec2::254]/x.png", "cloud metadata"),
        ("http://[::ffff:169.254.169.254]/x.png", "cloud metadata"),
        ("http://[64:ff9b::a9fe:a9fe]/x.png", "cloud metadata"),  # NAT64
        ("http://metadata.google.internal/computeMetadata/v1/", "metadata service"),
        ("http://0.0.0.0:8080/x.png", "unspecified"),
        ("ftp://example.com/x.png", "only http:// and https://"),
        ("file:///etc/passwd", "only http:// and https://"),
        ("http:///x.png", "has no host"),
    ],
)
def test_link_local_metadata_and_other_urls_are_refused_even_with_loopback_allowed(
    tmp_path, url, reason
):
    with pytest.raises(BadItem, match=reason) as error:
        media.check_url(url, limits(tmp_path, allow_loopback=True))
    assert str(error.value).startswith(url)


@pytest.mark.parametrize("url", ["http://127.0.0.1/x.png", "http://localhost/x.png"])
def test_loopback_is_refused_unless_allowed(tmp_path, url):
    with pytest.raises(BadItem, match=f"is loopback.*{media.ALLOW_LOOPBACK_ENV}=1"):
        media.check_url(url, limits(tmp_path))
    assert "127.0.0.1" in media.check_url(url, limits(tmp_path, allow_loopback=True))


def test_private_networks_are_allowed(tmp_path):
    assert media.check_url("http://10.1.2.3:9000/x.png", limits(tmp_path)) == ["10.1.2.3"]


# ---------------------------------------------------------------- HTTP through the cache


def test_loopback_http_server_only_with_allow_loopback(http, tmp_path):
    image = fashion_png()
    http.routes["/shirt.png"] = (200, {"Content-Type": "image/png"}, image)
    url = http.url("/shirt.png")
    with pytest.raises(BadItem, match="loopback"):
        media.MediaCache(limits(tmp_path)).fetch(url)
    assert http.requests == []  # refused before connecting

    allowed = limits(tmp_path, allow_loopback=True)
    cache = media.MediaCache(allowed)
    path = cache.fetch(url)
    assert path.read_bytes() == image and path.is_relative_to(tmp_path / "cache")
    assert cache.fetch(url) == path and http.requests == ["/shirt.png"]  # the second is a hit
    assert media.load_image(url, cache).size == (28, 28)


def test_redirects_are_followed_and_each_target_is_checked(http, tmp_path):
    http.routes["/good.png"] = (200, {}, fashion_png())
    http.routes["/moved"] = (302, {"Location": "/good.png"}, b"")
    http.routes["/to-metadata"] = (302, {"Location": "http://169.254.169.254/x"}, b"")
    cache = media.MediaCache(limits(tmp_path, allow_loopback=True))
    assert media.verify_image(http.url("/moved"), cache) == (28, 28)
    with pytest.raises(BadItem, match="169.254.169.254 is a cloud metadata"):
        cache.fetch(http.url("/to-metadata"))
    with pytest.raises(BadItem, match="HTTP 404"):
        cache.fetch(http.url("/missing.png"))


def test_dns_rebinding_is_refused_at_connect(http, tmp_path, monkeypatch):
    """The name resolves to a public address when checked and to loopback when the
    download connects: the connection's own address decides."""
    real = socket.getaddrinfo
    calls = []

    def rebinding(host, port, *args, **kwargs):
        if host != "rebind.test":
            return real(host, port, *args, **kwargs)
        calls.append(host)
        address = "93.184.216.34" if len(calls) == 1 else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    http.routes["/x.png"] = (200, {}, fashion_png())
    with pytest.raises(BadItem, match=r"rebind.test \(127.0.0.1\) is loopback"):
        media.MediaCache(limits(tmp_path)).fetch(http.url("/x.png", host="rebind.test"))
    assert len(calls) == 2 and http.requests == []  # connected, but sent no request


def test_size_cap_is_enforced_while_streaming(http, tmp_path):
    def endless(out):  # no Content-Length: the size shows only while reading
        for _ in range(4096):  # 256 MiB, unless the client hangs up first
            out.write(b"\0" * 65536)
            out.flush()

    http.routes["/endless"] = (200, {}, endless)
    cache = media.MediaCache(limits(tmp_path, allow_loopback=True, max_file_bytes=300_000))
    with pytest.raises(BadItem, match="larger than max_file_bytes=300000; the download was"):
        cache.fetch(http.url("/endless"))
    assert http.stopped_early.wait(10)  # the client hung up
    assert cache.size() == 0 and not list((tmp_path / "cache").rglob("*.part"))

    http.routes["/big.png"] = (200, {}, b"\0" * 300_001)  # says its size: refused unread
    with pytest.raises(BadItem, match="has 300001 bytes, more than max_file_bytes=300000"):
        cache.fetch(http.url("/big.png"))


# ---------------------------------------------------------------- S3 and local files


def test_s3_items_are_downloaded_into_the_cache(s3, s3_server, tmp_path):
    image = fashion_png(1)
    storage.write_bytes(f"s3://{s3}/images/a.png", image)
    cache = media.MediaCache(limits(tmp_path, max_file_bytes=len(image)))
    path = cache.fetch(f"s3://{s3}/images/a.png")
    assert path.read_bytes() == image and path.is_relative_to(tmp_path / "cache")
    assert media.load_image(f"s3://{s3}/images/a.png", cache).mode == "RGB"

    with pytest.raises(BadItem, match=f"s3://{s3}/images/b.png does not exist"):
        cache.fetch(f"s3://{s3}/images/b.png")
    storage.write_bytes(f"s3://{s3}/images/big.png", image + b"\0")
    with pytest.raises(BadItem, match=f"has {len(image) + 1} bytes, more than max_file_bytes"):
        cache.fetch(f"s3://{s3}/images/big.png")
    # A missing bucket is the environment's problem, not one bad item.
    with pytest.raises(FinetunerError, match="bucket 'no-such-bucket-media' does not exist") as e:
        cache.fetch("s3://no-such-bucket-media/a.png")
    assert not isinstance(e.value, BadItem)


def test_local_files_are_used_in_place_after_a_size_check(tmp_path):
    (tmp_path / "a.png").write_bytes(fashion_png())
    cache = media.MediaCache(limits(tmp_path, max_file_bytes=100))
    with pytest.raises(BadItem, match=r"a.png: the file has \d+ bytes, more than max_file_bytes"):
        cache.fetch(str(tmp_path / "a.png"))
    cache = media.MediaCache(limits(tmp_path))
    assert cache.fetch(str(tmp_path / "a.png")) == tmp_path / "a.png"
    with pytest.raises(BadItem, match="b.png does not exist"):
        cache.fetch(str(tmp_path / "b.png"))
    assert not (tmp_path / "cache").exists()


def test_a_pipe_or_folder_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")  # opening it for reading would wait for a writer
    (tmp_path / "folder.png").mkdir()
    cache = media.MediaCache(limits(tmp_path))
    for name in ("pipe.png", "folder.png"):
        with pytest.raises(BadItem, match=f"{name} is not a regular file"):
            media.load_image(str(tmp_path / name), cache)


# ---------------------------------------------------------------- the LRU cache


def test_lru_eviction_keeps_the_cache_under_its_cap(http, tmp_path):
    for i in range(12):
        http.routes[f"/{i}.bin"] = (200, {}, bytes([i]) * 3000)
    cache = media.MediaCache(
        limits(tmp_path, allow_loopback=True, max_file_bytes=3000, cache_max_bytes=10_000)
    )
    cache.fetch(http.url("/0.bin"))
    cache.fetch(http.url("/1.bin"))
    cache.fetch(http.url("/2.bin"))
    cache.fetch(http.url("/0.bin"))  # a hit: 0 is now used more recently than 1
    cache.fetch(http.url("/3.bin"))
    assert not cache.path_for(http.url("/1.bin")).exists()
    assert cache.path_for(http.url("/0.bin")).exists()
    for i in range(4, 12):
        cache.fetch(http.url(f"/{i}.bin"))
        assert cache.size() <= 10_000
    kept = {i for i in range(12) if cache.path_for(http.url(f"/{i}.bin")).exists()}
    assert kept == {9, 10, 11}  # the newest, within 90% of the cap after each eviction
    assert cache.size() == 9000

    cache = media.MediaCache(cache.limits)  # a fresh process's view counts the folder
    cache.fetch(http.url("/1.bin"))
    assert cache.size() <= 10_000


def test_a_file_evicted_by_another_process_is_downloaded_again(http, tmp_path):
    http.routes["/a.png"] = (200, {}, fashion_png())
    cache = media.MediaCache(limits(tmp_path, allow_loopback=True))
    os.unlink(cache.fetch(http.url("/a.png")))
    assert cache.read_bytes(http.url("/a.png")) == fashion_png()
    assert len(http.requests) == 2


# ---------------------------------------------------------------- images


def test_good_images_verify_and_load_as_rgb(tmp_path):
    (tmp_path / "a.png").write_bytes(fashion_png())  # grayscale
    cache = media.MediaCache(limits(tmp_path))
    assert media.verify_image(str(tmp_path / "a.png"), cache) == (28, 28)
    image = media.load_image(str(tmp_path / "a.png"), cache)
    assert image.mode == "RGB" and image.size == (28, 28)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (lambda: fashion_png()[:150], "truncated or corrupt PNG image"),
        (lambda: os.urandom(2000), "not an image: PIL does not recognise the file's format"),
        (lambda: b"", "not an image"),
        (lambda: png_claiming(30_000, 10), r"too large: 30000 x 10 pixels; .*max_image_side=20000"),
        (lambda: png_claiming(8000, 8000), r"8000 x 8000 = 64000000 pixels, more than max_image"),
        (lambda: png_claiming(15_000, 15_000), "too large: .*exceeds limit"),  # PIL's own cap
    ],
)
def test_bad_images_raise_bad_item_with_clear_messages(tmp_path, content, message):
    path = tmp_path / "bad.png"
    path.write_bytes(content())
    cache = media.MediaCache(limits(tmp_path))
    with pytest.raises(BadItem, match=message) as error:
        media.verify_image(str(path), cache)
    assert str(error.value).startswith(str(path))
    with pytest.raises(BadItem, match=message.split(":")[0]):
        media.load_image(str(path), cache)


def test_verify_and_decode_catch_different_damage(tmp_path):
    """verify() checks the chunks' structure and checksums; decoding checks the pixels."""
    (tmp_path / "hollow.png").write_bytes(png_claiming(300, 300))
    cache = media.MediaCache(limits(tmp_path))
    assert media.verify_image(str(tmp_path / "hollow.png"), cache) == (300, 300)
    with pytest.raises(BadItem, match="truncated or corrupt PNG image"):
        media.load_image(str(tmp_path / "hollow.png"), cache)
    # Cut after the pixel data: every pixel decodes, but the file is incomplete.
    (tmp_path / "cut.png").write_bytes(fashion_png()[:-12])
    with pytest.raises(BadItem, match="truncated or corrupt PNG image"):
        media.verify_image(str(tmp_path / "cut.png"), cache)
    assert media.load_image(str(tmp_path / "cut.png"), cache).size == (28, 28)


def test_image_caps_are_configurable(tmp_path):
    (tmp_path / "a.png").write_bytes(fashion_png())
    small = limits(tmp_path, max_image_pixels=700)
    with pytest.raises(BadItem, match="28 x 28 = 784 pixels, more than max_image_pixels=700"):
        media.load_image(str(tmp_path / "a.png"), limits=small)
    with pytest.raises(BadItem, match="max_image_side=20"):
        media.verify_image(str(tmp_path / "a.png"), limits=limits(tmp_path, max_image_side=20))


# ---------------------------------------------------------------- meshes

needs_meshes = pytest.mark.skipif(not MESHES.is_dir(), reason="install assimp-testmodels")
# The invalid models in formats trimesh reads, and the unsupported ones (3ds, ...).
INVALID = [
    "OutOfMemory.off", "empty.obj", "empty.off", "empty.ply", "malformed.obj", "empty.3ds",
    "empty.x", "emptyIrrMesh.xml",
]  # fmt: skip


@needs_meshes
@pytest.mark.parametrize("name", INVALID)
def test_invalid_assimp_meshes_raise_bad_item(name, tmp_path):
    with pytest.raises(BadItem, match=f"invalid/{name}: ") as error:
        media.verify_mesh(str(MESHES / "invalid" / name), media.MediaCache(limits(tmp_path)))
    assert any(
        word in str(error.value) for word in ("cannot read", "empty", "unsupported mesh file")
    )


@needs_meshes
def test_every_invalid_assimp_file_is_refused_or_gives_finite_points(tmp_path):
    cache = media.MediaCache(limits(tmp_path))
    for path in sorted((MESHES / "invalid").iterdir()):
        try:
            points = media.load_mesh(str(path), cache, n_points=64, seed=0)
        except BadItem:
            continue
        assert path.name == "malformed2.obj"  # only lacks its material
        assert points.shape == (64, 3) and np.isfinite(points).all()


@needs_meshes
def test_meshes_load_through_the_cache_and_their_caps(http, tmp_path):
    http.routes["/wuson.off"] = (200, {}, (MESHES / "OFF/Wuson.off").read_bytes())
    cache = media.MediaCache(limits(tmp_path, allow_loopback=True))
    points = media.load_mesh(http.url("/wuson.off"), cache, n_points=32, seed=0)
    assert points.shape == (32, 3) and points.dtype == np.float32
    tiny = limits(tmp_path, max_file_bytes=1000)
    with pytest.raises(BadItem, match="more than max_file_bytes=1000"):
        media.verify_mesh(str(MESHES / "OFF/Wuson.off"), limits=tiny)


def test_archives_and_gltf_with_external_files_are_refused(tmp_path):
    (tmp_path / "m.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    with pytest.raises(BadItem, match=r"m.zip: archives are not accepted .*supported: .*obj"):
        media.verify_mesh(str(tmp_path / "m.zip"), limits=limits(tmp_path))
    gltf = (
        '{"asset": {"version": "2.0"}, "buffers": [{"uri": "../../etc/passwd", "byteLength": 36}],'
        ' "bufferViews": [{"buffer": 0, "byteLength": 36}], "accessors": [{"bufferView": 0,'
        ' "componentType": 5126, "count": 3, "type": "VEC3"}], "meshes": [{"primitives":'
        ' [{"attributes": {"POSITION": 0}}]}], "nodes": [{"mesh": 0}], "scenes": [{"nodes": [0]}]}'
    )
    (tmp_path / "m.gltf").write_text(gltf)
    with pytest.raises(BadItem, match="must embed its buffers"):
        media.verify_mesh(str(tmp_path / "m.gltf"), limits=limits(tmp_path))


# ---------------------------------------------------------------- data.resolve_media


def test_resolve_media_accepts_allowed_urls_and_refuses_others(tmp_path, monkeypatch):
    csv = str(tmp_path / "pairs.csv")
    url = "http://127.0.0.1:9/x.png"
    with pytest.raises(BadItem, match=f"{csv}, line 3, column 2: {url}: refused: .*loopback"):
        data.resolve_media(csv, 3, 2, url)
    monkeypatch.setenv(media.ALLOW_LOOPBACK_ENV, "1")
    assert data.resolve_media(csv, 3, 2, url) == url
    with pytest.raises(BadItem, match="line 1, column 1: .*link-local"):
        data.resolve_media(csv, 1, 1, "https://169.254.0.9/x.png")
    with pytest.raises(FinetunerError, match="must be a path inside the data file's folder"):
        data.resolve_media(csv, 1, 1, "file:///etc/passwd")


def test_resolve_media_refuses_a_symbolic_link_out_of_the_folder(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "secret.png").write_bytes(fashion_png())
    (tmp_path / "data" / "link.png").symlink_to(tmp_path / "secret.png")
    (tmp_path / "data" / "own.png").write_bytes(fashion_png())
    (tmp_path / "data" / "alias.png").symlink_to(tmp_path / "data" / "own.png")
    csv = str(tmp_path / "data" / "pairs.csv")
    with pytest.raises(FinetunerError, match="'link.png' leads outside the data file's folder"):
        data.resolve_media(csv, 2, 1, "link.png")
    assert data.resolve_media(csv, 2, 1, "alias.png") == str(tmp_path / "data" / "alias.png")
