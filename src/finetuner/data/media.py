"""Media items (images and meshes) from local paths, s3:// URIs and http(s) URLs.

Remote files come through `MediaCache`, a bounded on-disk cache that several processes
(DataLoader workers) can share. Every limit lives in `MediaLimits`. Anything wrong with one
item raises `BadItem`, whose message names the item, the problem and what is valid, so that a
reader can point at the row and a training loader can skip the item.

PIL, trimesh and boto3 are imported when first needed: `import finetuner.data.media` stays light.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import ipaddress
import os
import socket
import stat
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import BinaryIO
from urllib.parse import urljoin, urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from finetuner.errors import BadItem, FinetunerError
from finetuner.io import storage

__all__ = [
    "BadItem",
    "MediaCache",
    "MediaLimits",
    "check_url",
    "default_cache",
    "load_image",
    "load_mesh",
    "verify_image",
    "verify_mesh",
]

MiB = 1024 * 1024
ALLOW_LOOPBACK_ENV = "FINETUNER_ALLOW_LOOPBACK_URLS"
# Cloud metadata services hand out credentials; no media URL may reach them.
METADATA_HOSTS = {"metadata.google.internal", "metadata.goog", "metadata"}
METADATA_ADDRESSES = {
    ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack
    ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
}
# 0.0.0.0/8 is "this network": connecting to it reaches the local host on Linux.
THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
MAX_REDIRECTS = 5
CHUNK = 1 * MiB
# Archives unpack to an unbounded size (zip bombs), so they are not accepted as meshes.
ARCHIVE_TYPES = {"zip", "bz2", "gz", "tar.gz", "tar.bz2"}


def _allow_loopback_from_env() -> bool:
    return os.environ.get(ALLOW_LOOPBACK_ENV, "").strip().lower() in ("1", "true", "yes")


def default_cache_dir() -> Path:
    """$FINETUNER_CACHE/_media, else ~/.cache/finetuner/media.

    The underscore keeps it apart from the s3 copies that `storage.local_copy` keeps under
    $FINETUNER_CACHE/<bucket>: no bucket name can contain one.
    """
    from finetuner.io.cachedir import writable

    if os.environ.get("FINETUNER_CACHE"):
        return writable(Path(os.environ["FINETUNER_CACHE"]).expanduser() / "_media")
    return writable(Path.home() / ".cache" / "finetuner" / "media")


class MediaLimits(BaseModel):
    """Caps on media items and the cache they pass through; each can be set per run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_file_bytes: int = Field(
        50 * MiB,
        gt=0,
        description="Largest image or mesh file, in bytes. Enforced before a download when "
        "the server says the size, and while streaming when it does not.",
    )
    max_image_pixels: int = Field(
        50_000_000,
        gt=0,
        description="Largest width x height of an image, checked from its header before any "
        "pixel is decoded (a small file can claim a huge image: a decompression bomb).",
    )
    max_image_side: int = Field(
        20_000, gt=0, description="Largest width or height of an image, in pixels."
    )
    allow_loopback: bool = Field(
        default_factory=_allow_loopback_from_env,
        description="Accept media URLs that resolve to loopback addresses (127.0.0.0/8, ::1), "
        "for tests with a local server. Defaults to the environment variable "
        f"{ALLOW_LOOPBACK_ENV}=1, so that pipeline steps in subprocesses inherit it. "
        "Link-local and metadata addresses are refused regardless.",
    )
    cache_dir: Path = Field(
        default_factory=default_cache_dir,
        description="Where downloaded media are kept: $FINETUNER_CACHE/_media, else "
        "~/.cache/finetuner/media.",
    )
    cache_max_bytes: int = Field(
        2 * 1024 * MiB,
        gt=0,
        description="Size of the media cache on disk; the least recently used files are "
        "removed beyond it. Must be at least max_file_bytes.",
    )
    timeout_s: float = Field(
        30.0,
        gt=0,
        description="Seconds an http(s) download may wait for the server at each step, and "
        "about the longest a download may take.",
    )

    @model_validator(mode="after")
    def _cache_holds_a_file(self):
        if self.cache_max_bytes < self.max_file_bytes:
            raise ValueError(
                f"cache_max_bytes ({self.cache_max_bytes}) must be at least max_file_bytes "
                f"({self.max_file_bytes}), or the cache could not hold one file"
            )
        return self


def kind_of(uri: str) -> str:
    """'s3', 'http' (for http and https) or 'local'."""
    if storage.is_s3(uri):
        return "s3"
    if uri.lower().startswith(("http://", "https://")):
        return "http"
    return "local"


def suffix(uri: str) -> str:
    """The file type of a URI's path, lower case and without the dot: 'png', 'tar.gz'."""
    path = urlsplit(uri).path if kind_of(uri) == "http" else uri
    suffixes = [s.lower().lstrip(".") for s in PurePosixPath(path).suffixes]
    if suffixes[-2:-1] == ["tar"]:
        return "tar." + suffixes[-1]
    return suffixes[-1] if suffixes else ""


# ---------------------------------------------------------------- URLs


@functools.lru_cache(maxsize=256)
def _resolve(host: str, port: int) -> tuple[str, ...]:
    # Cached: a data file often names one host thousands of times. A stale answer cannot
    # let a request through, since every connection checks the address it reached.
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return tuple(dict.fromkeys(info[4][0] for info in infos))


def _refusal(address: str, limits: MediaLimits) -> str | None:
    """Why a connection to this IP address is refused ("loopback", ...), or None."""
    ip = ipaddress.ip_address(address.split("%")[0])  # drop an IPv6 zone ("fe80::1%eth0")
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv6 address can carry an IPv4 one that the kernel or a gateway connects to:
        # ::ffff:169.254.169.254 (mapped), 2002:a9fe:a9fe:: (6to4), 64:ff9b::a9fe:a9fe (NAT64).
        if ip.ipv4_mapped or ip.sixtofour:
            ip = ip.ipv4_mapped or ip.sixtofour
        elif ip in NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if ip.is_link_local:
        return "link-local (169.254.0.0/16, fe80::/10)"
    if ip.is_unspecified or ip in THIS_NETWORK:
        return "unspecified (0.0.0.0/8, ::)"
    if ip.is_multicast:
        return "multicast"
    if ip.is_loopback and not limits.allow_loopback:
        return (
            f"loopback, which is refused unless {ALLOW_LOOPBACK_ENV}=1 "
            "(or MediaLimits.allow_loopback) allows it, for tests"
        )
    return None


def _refused(url: str, host: str, address: str, reason: str) -> BadItem:
    what = host if host == address else f"{host} ({address})"
    return BadItem(
        f"{url}: refused: {what} is {reason}; media URLs must reach a public or private "
        "network address"
    )


def check_url(url: str, limits: MediaLimits) -> list[str]:
    """Refuse a media URL that is not http(s), or whose host resolves to a link-local,
    metadata, unspecified or (unless allowed) loopback address. Private networks are allowed:
    in-cluster servers live there. Returns the addresses the host resolves to.

    This check alone cannot stop DNS rebinding (a host that resolves to another address
    when the download connects), so `MediaCache` also checks the address each connection
    reached before it sends the request.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise BadItem(f"{url}: only http:// and https:// URLs are fetched, not {parts.scheme!r}")
    try:
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as error:  # a port that is not a number
        raise BadItem(f"{url}: not a valid URL ({error})") from None
    if not host:
        raise BadItem(f"{url}: the URL has no host; expected http(s)://host/path")
    if host.rstrip(".").lower() in METADATA_HOSTS:
        raise BadItem(f"{url}: refused: {host} is a cloud metadata service")
    try:
        addresses = _resolve(host, port)
    except (socket.gaierror, UnicodeError) as error:
        raise BadItem(f"{url}: cannot resolve the host {host!r} ({error})") from None
    for address in addresses:
        reason = _refusal(address, limits)
        if reason:
            raise _refused(url, host, address, reason)
    return list(addresses)


# ---------------------------------------------------------------- downloads


def _too_big(uri: str, size: int, limits: MediaLimits) -> BadItem:
    return BadItem(
        f"{uri}: the file has {size} bytes, more than max_file_bytes={limits.max_file_bytes}"
    )


def _copy_capped(read, out: BinaryIO, uri: str, limits: MediaLimits) -> None:
    """Copy a stream by chunks, stopping once it passes max_file_bytes: a server that does
    not say the size, or says it wrongly, cannot fill the disk."""
    deadline = time.monotonic() + limits.timeout_s
    total = 0
    while chunk := read(CHUNK):
        total += len(chunk)
        if total > limits.max_file_bytes:
            raise BadItem(
                f"{uri}: the file is larger than max_file_bytes={limits.max_file_bytes}; "
                "the download was stopped there"
            )
        if time.monotonic() > deadline:
            raise BadItem(f"{uri}: the download took longer than timeout_s={limits.timeout_s}")
        try:
            out.write(chunk)
        except OSError as error:  # the cache's disk, not the item: no BadItem
            raise FinetunerError(f"cannot write {uri} to the media cache: {error}") from None


def _download_s3(uri: str, out: BinaryIO, limits: MediaLimits) -> None:
    from botocore.exceptions import ClientError

    bucket, key = storage.split_s3(uri)
    with storage._s3_errors("reading", uri):
        try:
            response = storage._client().get_object(Bucket=bucket, Key=key)
        except ClientError as error:
            code = error.response["Error"]["Code"]
            # A missing object is one bad item; a missing bucket or refused credentials are
            # the environment's problem, which _s3_errors reports as such.
            if code in storage._NOT_FOUND and not storage._bucket_missing(bucket):
                raise BadItem(f"{uri} does not exist (endpoint {storage._endpoint()})") from None
            raise
        body = response["Body"]
        try:
            if response.get("ContentLength", 0) > limits.max_file_bytes:
                raise _too_big(uri, response["ContentLength"], limits)
            _copy_capped(body.read, out, uri, limits)
        finally:
            body.close()


def _connect(url: str, limits: MediaLimits):
    """An open HTTP(S) connection to the URL's host, refused if the address it reached is
    not allowed (DNS rebinding: the name may resolve elsewhere than when it was checked)."""
    import http.client

    check_url(url, limits)
    parts = urlsplit(url)
    cls = (
        http.client.HTTPSConnection
        if parts.scheme.lower() == "https"
        else http.client.HTTPConnection
    )
    connection = cls(parts.hostname, parts.port, timeout=limits.timeout_s)
    try:
        connection.connect()
        address = connection.sock.getpeername()[0]
    except OSError as error:
        connection.close()
        raise BadItem(f"{url}: cannot connect to {parts.hostname} ({error})") from None
    reason = _refusal(address, limits)
    if reason:
        connection.close()
        raise _refused(url, parts.hostname, address, reason)
    return connection


def _download_http(url: str, out: BinaryIO, limits: MediaLimits) -> None:
    """GET the URL with the stdlib, following up to MAX_REDIRECTS redirects (each checked)."""
    import http.client

    original = url
    for _ in range(MAX_REDIRECTS + 1):
        connection = _connect(url, limits)
        try:
            parts = urlsplit(url)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            headers = {"User-Agent": "finetuner", "Accept-Encoding": "identity"}
            connection.request("GET", target, headers=headers)
            response = connection.getresponse()
            if response.status in (301, 302, 303, 307, 308) and response.getheader("Location"):
                url = urljoin(url, response.getheader("Location"))
                continue
            if response.status != 200:
                raise BadItem(
                    f"{url}: the server answered HTTP {response.status} {response.reason}"
                )
            length = response.getheader("Content-Length")
            if length and length.isdigit() and int(length) > limits.max_file_bytes:
                raise _too_big(url, int(length), limits)
            _copy_capped(response.read, out, url, limits)
            return
        except (OSError, http.client.HTTPException) as error:
            raise BadItem(f"{url}: download failed ({type(error).__name__}: {error})") from None
        finally:
            connection.close()
    raise BadItem(f"{original}: more than {MAX_REDIRECTS} redirects")


# ---------------------------------------------------------------- the cache


def _local_path(uri: str) -> str:
    path = uri.removeprefix("file://")
    return os.path.expanduser(path) if path.startswith("~") else path


class MediaCache:
    """Local files for media URIs. Local paths are used in place; s3:// and http(s)://
    files are downloaded into `limits.cache_dir`, named by a hash of the URI, and kept
    while the cache stays under `limits.cache_max_bytes` (least recently used go first).

    Several processes may share one folder: a download goes to a temporary file that is
    renamed into place, and a file removed by another process's eviction is downloaded
    again. The cache assumes that the file at a URI does not change; clear the folder if it
    does.
    """

    # Each process scans the folder after adding this share of the cap, so that the files
    # other processes add are counted too. Between scans the folder may pass the cap by
    # about this much per process.
    RESCAN_SHARE = 16
    # An eviction goes below the cap, so that it is not needed again at the next file.
    LOW_WATER = 0.9
    # A partial download this old was left by a process that died; eviction removes it.
    STALE_PART_S = 3600

    def __init__(self, limits: MediaLimits | None = None):
        self.limits = limits or MediaLimits()
        self.root = Path(self.limits.cache_dir)
        self._total: int | None = None  # bytes in the folder at the last scan
        self._added = 0  # bytes this process added since

    def path_for(self, uri: str) -> Path:
        digest = hashlib.sha256(uri.encode()).hexdigest()
        return self.root / digest[:2] / digest

    def fetch(self, uri: str) -> Path:
        """A local file holding the item at `uri`; raises BadItem if it is missing, too big
        or refused."""
        uri = str(uri)
        if kind_of(uri) == "local":
            return self._local(uri)
        path = self.path_for(uri)
        try:
            os.utime(path)  # a hit: mark it recently used
            size = path.stat().st_size
        except FileNotFoundError:
            self._download(uri, path)
            return path
        if size > self.limits.max_file_bytes:  # cached under a larger cap
            raise _too_big(uri, size, self.limits)
        return path

    def open(self, uri: str) -> BinaryIO:
        """The item's file, opened for reading. Once open, it stays readable even if
        another process evicts it."""
        uri = str(uri)
        if kind_of(uri) == "local":
            return self._open_checked(uri, _local_path(uri))
        for attempt in range(2):
            path = self.fetch(uri)
            try:
                return open(path, "rb")
            except FileNotFoundError:  # evicted by another process just now: fetch again
                if attempt:
                    raise BadItem(f"{uri} does not exist") from None
            except OSError as error:
                raise BadItem(f"{uri}: cannot read ({error})") from None
        raise AssertionError("unreachable")

    def read_bytes(self, uri: str) -> bytes:
        with self.open(uri) as file:
            return file.read()

    def _local(self, uri: str) -> Path:
        path = _local_path(uri)
        self._open_checked(uri, path).close()
        return Path(path)

    def _open_checked(self, uri: str, path: str) -> BinaryIO:
        """Open a local file and check what was opened: a regular file within the size cap.
        O_NONBLOCK, so that a named pipe cannot block the open."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BadItem(f"{uri} does not exist") from None
        except (OSError, ValueError) as error:  # ValueError: a NUL in the path
            raise BadItem(f"{uri}: cannot read ({error})") from None
        info = os.fstat(fd)
        problem = None
        if not stat.S_ISREG(info.st_mode):
            problem = BadItem(f"{uri} is not a regular file")
        elif info.st_size > self.limits.max_file_bytes:
            problem = _too_big(uri, info.st_size, self.limits)
        if problem:
            os.close(fd)
            raise problem
        return os.fdopen(fd, "rb")

    def _download(self, uri: str, path: Path) -> None:
        download = _download_s3 if kind_of(uri) == "s3" else _download_http
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, part = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".part")
        except OSError as error:
            raise FinetunerError(f"cannot write to the media cache {self.root}: {error}") from None
        try:
            with os.fdopen(fd, "wb") as out:
                download(uri, out, self.limits)
            os.replace(part, path)  # atomic: readers see the whole file or none
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part)
            raise
        with contextlib.suppress(FileNotFoundError):  # evicted by another process already
            self._added += os.path.getsize(path)
        self._maybe_evict(keep=path)

    def _maybe_evict(self, keep: Path) -> None:
        cap = self.limits.cache_max_bytes
        if (
            self._total is None
            or self._total + self._added > cap
            or self._added >= cap // self.RESCAN_SHARE
        ):
            self.evict(keep=keep)

    def size(self) -> int:
        """Bytes of the files in the cache."""
        return sum(size for _, size, _ in self._entries())

    def _entries(self) -> list[tuple[float, int, str]]:
        """(last use, size, path) of each cached file; removes stale partial downloads."""
        entries = []
        now = time.time()
        for folder in self.root.glob("??"):
            try:
                files = list(os.scandir(folder))
            except FileNotFoundError:
                continue
            for entry in files:
                try:
                    info = entry.stat()
                    if entry.name.endswith(".part"):
                        if now - info.st_mtime > self.STALE_PART_S:
                            os.unlink(entry.path)
                        continue
                except FileNotFoundError:  # removed by another process meanwhile
                    continue
                entries.append((info.st_mtime, info.st_size, entry.path))
        return entries

    def evict(self, keep: Path | None = None) -> None:
        """Remove the least recently used files until the cache is under its cap."""
        entries = self._entries()
        total = sum(size for _, size, _ in entries)
        if total > self.limits.cache_max_bytes:
            goal = self.limits.cache_max_bytes * self.LOW_WATER
            for _, size, name in sorted(entries):
                if total <= goal:
                    break
                if keep is not None and name == str(keep):
                    continue
                try:
                    os.unlink(name)
                except FileNotFoundError:  # another process evicted it first
                    pass
                total -= size
        self._total, self._added = total, 0


_default_cache: MediaCache | None = None
_default_key: tuple = ()


def default_cache() -> MediaCache:
    """A cache with the default limits, shared by the calls that are given none."""
    global _default_cache, _default_key
    # What the default limits depend on; building MediaLimits on every item is costly.
    key = (os.environ.get("FINETUNER_CACHE"), _allow_loopback_from_env(), str(Path.home()))
    if _default_cache is None or key != _default_key:
        _default_cache, _default_key = MediaCache(MediaLimits()), key
    return _default_cache


def _cache_and_limits(cache, limits) -> tuple[MediaCache, MediaLimits]:
    cache = cache or (MediaCache(limits) if limits else default_cache())
    return cache, limits or cache.limits


# ---------------------------------------------------------------- images


@contextmanager
def _open_image(uri: str, cache: MediaCache, limits: MediaLimits) -> Iterator:
    """The PIL image at `uri`, opened lazily (its header only) and checked against the caps."""
    from PIL import Image, UnidentifiedImageError

    # PIL refuses images above twice its MAX_IMAGE_PIXELS as it opens them, before their size
    # can be checked here; keep its cap at least ours, so that ours decides, with a message
    # that names the setting. Its warning between one and two times its cap is ours to give.
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < limits.max_image_pixels:
        Image.MAX_IMAGE_PIXELS = limits.max_image_pixels
    with cache.open(uri) as file:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(file)
        except UnidentifiedImageError:
            raise BadItem(
                f"{uri}: not an image: PIL does not recognise the file's format (valid: PNG, "
                "JPEG, GIF, BMP, TIFF, WebP and the other formats PIL reads)"
            ) from None
        except Image.DecompressionBombError as error:
            raise BadItem(
                f"{uri}: too large: {error} (max_image_pixels={limits.max_image_pixels})"
            ) from None
        except Exception as error:  # PIL's format plugins raise many kinds on bad headers
            raise BadItem(
                f"{uri}: corrupt image header ({type(error).__name__}: {error})"
            ) from None
        with image:
            _check_size(uri, image.size, limits)
            yield image


def _check_size(uri: str, size: tuple[int, int], limits: MediaLimits) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise BadItem(f"{uri}: empty image ({width} x {height} pixels)")
    if max(width, height) > limits.max_image_side:
        raise BadItem(
            f"{uri}: too large: {width} x {height} pixels; the longest side may be "
            f"max_image_side={limits.max_image_side}"
        )
    if width * height > limits.max_image_pixels:
        raise BadItem(
            f"{uri}: too large: {width} x {height} = {width * height} pixels, more than "
            f"max_image_pixels={limits.max_image_pixels}"
        )


def _corrupt(uri: str, image, error: Exception) -> BadItem:
    return BadItem(
        f"{uri}: truncated or corrupt {image.format} image ({type(error).__name__}: {error})"
    )


def verify_image(
    uri: str, cache: MediaCache | None = None, limits: MediaLimits | None = None
) -> tuple[int, int]:
    """Check an image without decoding its pixels: that PIL recognises it, that its size is
    within the caps, and that its structure is whole (PIL's verify(): a truncated PNG or a
    bad chunk checksum). Returns (width, height); raises BadItem.

    Formats without checksums (JPEG) may still fail to decode; `load_image` reports that.
    """
    cache, limits = _cache_and_limits(cache, limits)
    with _open_image(uri, cache, limits) as image:
        try:
            image.verify()
        except Exception as error:
            raise _corrupt(uri, image, error) from None
        return image.size


def load_image(uri: str, cache: MediaCache | None = None, limits: MediaLimits | None = None):
    """The image at `uri` decoded as an RGB PIL image, after the checks of `verify_image`
    but verify(); raises BadItem if it is missing, too large, truncated or corrupt."""
    cache, limits = _cache_and_limits(cache, limits)
    with _open_image(uri, cache, limits) as image:
        try:
            return image.convert("RGB")
        except Exception as error:  # OSError when truncated; decoders raise others on bad data
            raise _corrupt(uri, image, error) from None


# ---------------------------------------------------------------- meshes


def load_mesh(
    uri: str,
    cache: MediaCache | None = None,
    limits: MediaLimits | None = None,
    n_points: int = 2048,
    augment: bool = False,
    seed: int | None = None,
):
    """Points sampled on the mesh at `uri`, as `mesh.load_points` returns them; raises
    BadItem if the file is missing, too big, an archive or not a readable mesh.

    The mesh is parsed from its bytes, never from a path: a glTF file that names other files
    (buffers, textures) cannot make the loader read outside the item. Such a glTF must embed
    its buffers, or come as .glb.
    """
    from finetuner.data import mesh

    cache, limits = _cache_and_limits(cache, limits)
    file_type = suffix(uri)
    formats = [t for t in mesh.supported_formats() if t not in ARCHIVE_TYPES]
    if file_type not in formats:
        why = (
            "archives are not accepted as meshes, since their unpacked size has no bound"
            if file_type in ARCHIVE_TYPES
            else f"unsupported mesh file type {file_type!r}"
        )
        raise BadItem(f"{uri}: {why}; supported: {', '.join(formats)}")
    data = cache.read_bytes(uri)  # size-checked by the cache
    try:
        return mesh.load_points(
            data, file_type=file_type, n_points=n_points, augment=augment, seed=seed, name=uri
        )
    except BadItem:
        raise
    except FinetunerError as error:
        hint = " (a .gltf must embed its buffers: files it names are not read)"
        raise BadItem(f"{error}{hint if file_type == 'gltf' else ''}") from None
    except Exception as error:  # sampling a malformed mesh can fail in numpy
        raise BadItem(f"{uri}: not a usable mesh ({type(error).__name__}: {error})") from None


def verify_mesh(
    uri: str, cache: MediaCache | None = None, limits: MediaLimits | None = None
) -> None:
    """Check that the mesh at `uri` loads and has surface (or points) to sample; raises
    BadItem. It parses the whole file: trimesh has no cheaper check."""
    load_mesh(uri, cache, limits, n_points=16, seed=0)
