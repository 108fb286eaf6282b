"""An export loaded for serving: its model (or CLIP's two towers), the optional matryoshka
truncation, and the checks that turn a request's items into what the model encodes.

Everything wrong with a request raises `BadRequest`, whose message names the item and says
what is valid; the server answers it with a 4xx.
"""

from __future__ import annotations

import base64
import binascii
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from finetuner.errors import BadItem, FinetunerError
from finetuner.export import inference
from finetuner.io import storage
from finetuner.io.claim import MANIFEST

IMAGE_SCHEMES = ("http", "https")


class BadRequest(ValueError):
    """A request the server refuses: `status` is its HTTP status (4xx)."""

    def __init__(self, message: str, status: int = 400, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.param = param


def load_model(uri: str, *, onnx: bool, int8: bool, select_model: str | None):
    """The export's model (or CLIP tower): PyTorch, ONNX, or int8 ONNX (which the int8 gate
    may have left out; the error then says why)."""
    try:
        return inference.get_model(uri, is_onnx=onnx or int8, int8=int8, select_model=select_model)
    except FinetunerError as error:
        raise FinetunerError(f"--int8: {error}" if int8 else str(error)) from None


def towers_of(uri: str) -> tuple[str, ...]:
    """CLIP's tower names for a two-tower export, else ()."""
    from finetuner.models.folder import read_spec
    from finetuner.models.registry import get_family

    if not storage.exists(storage.join(uri, MANIFEST)):
        inference.get_model(uri)  # raises its "not a finished export" error
    root = storage.local_copy(uri.rstrip("/") + "/")
    return get_family(read_spec(root / "model").family).towers


def truncate(vectors: np.ndarray, dim: int | None) -> np.ndarray:
    """The first `dim` coordinates, back to unit length (a matryoshka prefix)."""
    if dim is None or dim == vectors.shape[1]:
        return vectors
    prefix = vectors[:, :dim]
    norms = np.linalg.norm(prefix, axis=1, keepdims=True)
    return prefix / np.maximum(norms, 1e-12)


@dataclass
class Tower:
    """One model the server encodes with, and the kind of item it takes."""

    name: str
    model: object
    kind: str  # "text" or "image" (vectors are sent as text)
    dim: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _kind(model, tower: str | None) -> str:
    if tower is not None:
        return "image" if tower.endswith("vision") else "text"
    kind = model.spec.query_kind
    if kind not in ("text", "image", "vector"):
        raise FinetunerError(
            f"serving embeds text, images and vectors; this export's model takes {kind} items."
        )
    return "image" if kind == "image" else "text"


def _blank_png(folder: Path) -> str:
    from PIL import Image

    path = folder / "warm-up.png"
    Image.new("RGB", (32, 32)).save(path)
    return str(path)


class Encoder:
    """The served export: one tower, or CLIP's two, each encoding under its own lock (a
    tokenizer must not be used by two threads at once)."""

    def __init__(
        self,
        uri: str,
        *,
        onnx: bool = False,
        int8: bool = False,
        truncate_dim: int | None = None,
        max_batch: int = 256,
    ):
        from finetuner.data.media import MediaLimits

        self.limits = MediaLimits()
        self.max_batch = max_batch
        names = towers_of(uri) or (None,)
        self.towers: dict[str, Tower] = {}
        for name in names:
            model = load_model(uri, onnx=onnx, int8=int8, select_model=name)
            tower = Tower(name or "", model, _kind(model, name))
            with tempfile.TemporaryDirectory() as tmp:  # a first encode: warm, and its size
                probe = "warm-up" if tower.kind == "text" else _blank_png(Path(tmp))
                tower.dim = int(model.encode([probe]).shape[1])
            self.towers[tower.name] = tower
        dims = {t.dim for t in self.towers.values()}
        if truncate_dim is not None and not 0 < truncate_dim <= min(dims):
            raise FinetunerError(
                f"--truncate-dim {truncate_dim}: the model's embeddings have {min(dims)} "
                f"dimensions; valid: 1 to {min(dims)}."
            )
        self.truncate_dim = truncate_dim
        self.dim = truncate_dim or min(dims)

    def pick(self, items: list[str], tower: str | None) -> Tower:
        """The tower that encodes `items`: the one named, the only one, or for CLIP the
        vision tower when every item is an image URL or data URI, else the text tower."""
        if tower:
            if tower not in self.towers:
                valid = ", ".join(repr(t) for t in self.towers)
                raise BadRequest(f"model {tower!r} is not served here; valid: {valid}", 404)
            return self.towers[tower]
        if len(self.towers) == 1:
            return next(iter(self.towers.values()))
        images = [looks_like_image(item) for item in items]
        if all(images):
            return next(t for t in self.towers.values() if t.kind == "image")
        if any(images):
            raise BadRequest(
                "the inputs mix images and texts; send them in separate requests, or name the "
                f"tower in `model` ({', '.join(self.towers)})"
            )
        return next(t for t in self.towers.values() if t.kind == "text")

    def check_items(self, items) -> list[str]:
        if not isinstance(items, list) or not items:
            raise BadRequest("the input must be a non-empty list of strings")
        if len(items) > self.max_batch:
            raise BadRequest(
                f"{len(items)} inputs in one request; at most {self.max_batch} (--max-batch)"
            )
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise BadRequest(
                    f"input[{i}] is {type(item).__name__}, not a string: send texts, image "
                    "URLs or data URIs (token ids are not accepted)"
                )
            if not item:
                raise BadRequest(f"input[{i}] is an empty string")
        return items

    def encode(self, items, tower_name: str | None = None, dim: int | None = None) -> np.ndarray:
        """Unit-length embeddings of checked items; blocking (run it in a worker thread)."""
        items = self.check_items(items)
        tower = self.pick(items, tower_name)
        if dim is not None and not 0 < dim <= self.dim:
            raise BadRequest(f"dimensions={dim}; valid: 1 to {self.dim}", param="dimensions")
        with tempfile.TemporaryDirectory() as tmp:
            if tower.kind == "image":
                items = [self._image(item, i, Path(tmp)) for i, item in enumerate(items)]
            try:
                with tower.lock:
                    vectors = tower.model.encode(items)
            except BadItem as error:  # a JPEG that decodes badly only shows here
                raise BadRequest(str(error).replace(tmp, "data URI")) from None
        return truncate(truncate(vectors, self.truncate_dim), dim).astype(np.float32)

    def _image(self, item: str, i: int, tmp: Path) -> str:
        """A file or URL that media's loader reads, after the checks of training data."""
        from finetuner.data import media

        if item.startswith("data:"):
            header, comma, payload = item.partition(",")
            if not comma or not header.startswith("data:image/") or not header.endswith(";base64"):
                raise BadRequest(f"input[{i}]: a data URI must be data:image/<type>;base64,...")
            if len(payload) // 4 * 3 > self.limits.max_file_bytes:
                raise BadRequest(
                    f"input[{i}]: the image is larger than {self.limits.max_file_bytes} bytes"
                )
            try:
                data = base64.b64decode(payload, validate=True)
            except binascii.Error as error:
                raise BadRequest(
                    f"input[{i}]: the data URI is not valid base64 ({error})"
                ) from None
            path = tmp / f"{i}.image"
            path.write_bytes(data)
            source, label = str(path), "the data URI"
        elif urlsplit(item).scheme.lower() in IMAGE_SCHEMES:
            source, label = item, item
        else:
            raise BadRequest(
                f"input[{i}]: an image is an http(s) URL or a data:image/...;base64 URI; the "
                "server reads no local files or buckets"
            )
        try:
            media.verify_image(source, limits=self.limits)
        except BadItem as error:
            raise BadRequest(f"input[{i}]: {str(error).replace(source, label)}") from None
        return source


def looks_like_image(item) -> bool:
    if not isinstance(item, str):
        return False
    if item.startswith("data:image/"):
        return True
    return urlsplit(item).scheme.lower() in IMAGE_SCHEMES and " " not in item
