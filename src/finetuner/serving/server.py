"""`finetuner serve`: an export as a KServe custom predictor (`kserve.Model` in
`kserve.ModelServer`, the code an InferenceService runs), with KServe's v1/v2 predict routes,
its health routes, and an OpenAI-compatible embeddings route.

KServe's own OpenAI classes (`kserve.protocol.rest.openai`) import vLLM when imported; the
ModelServer then skips its OpenAI routes. The embeddings route is therefore ours, added to
the ModelServer's FastAPI application at `/openai/v1/embeddings` (KServe's path) and
`/v1/embeddings` (the OpenAI clients' default path below a base URL). kserve and FastAPI are
imported only here, when a server starts.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import sys
import uuid

import numpy as np

from finetuner.errors import FinetunerError
from finetuner.serving.encoder import BadRequest, Encoder

MiB = 1024 * 1024
DEFAULT_PORT = 8080
# Loopback on a workstation; the InferenceService's container passes --host 0.0.0.0.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_MAX_BATCH = 256
DEFAULT_MAX_REQUEST_BYTES = 32 * MiB
OPENAI_PATHS = ("/openai/v1/embeddings", "/v1/embeddings")


def _import_kserve():
    """kserve's model_server parses sys.argv when imported (its own flags, e.g. --http_port):
    it must not see ours."""
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        import kserve
        import kserve.model_server
    finally:
        sys.argv = argv
    return kserve


def predictor_class():
    """The kserve.Model subclass (made on first use: kserve is imported lazily)."""
    kserve = _import_kserve()
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

    class EmbeddingPredictor(kserve.Model):
        """v1: {"instances": [item, ...]} -> {"predictions": [[float, ...], ...]};
        v2: one BYTES input of items -> one FP32 output "embedding" of shape [n, dim]."""

        def __init__(self, name: str, encoder: Encoder):
            super().__init__(name)
            self.encoder = encoder
            self.ready = True  # the export is loaded (and warmed) before the server starts

        async def encode(self, items, tower=None, dim=None) -> np.ndarray:
            return await asyncio.to_thread(self.encoder.encode, items, tower, dim)

        async def predict(self, payload, headers=None, response_headers=None):
            try:
                if isinstance(payload, InferRequest):
                    return await self._predict_v2(payload)
                if not isinstance(payload, dict) or "instances" not in payload:
                    raise BadRequest(
                        'a v1 request is a JSON object {"instances": [item, ...]}, sent with '
                        "Content-Type: application/json"
                    )
                vectors = await self.encode(payload["instances"])
                return {"predictions": vectors.tolist()}
            except BadRequest as error:
                raise InvalidInput(str(error)) from None

        async def _predict_v2(self, request):
            if len(request.inputs) != 1:
                raise BadRequest(
                    f"a v2 request has one input (BYTES, shape [n]); got {len(request.inputs)}"
                )
            tensor = request.inputs[0]
            if tensor.datatype != "BYTES":
                raise BadRequest(f"input {tensor.name!r} is {tensor.datatype}; send BYTES")
            data = tensor.data
            if isinstance(data, np.ndarray):
                data = [x.decode() if isinstance(x, bytes) else x for x in data.ravel().tolist()]
            vectors = await self.encode(list(data))
            output = InferOutput("embedding", list(vectors.shape), "FP32", vectors.ravel().tolist())
            return InferResponse(
                response_id=request.id or str(uuid.uuid4()),
                model_name=self.name,
                infer_outputs=[output],
            )

    return EmbeddingPredictor


def openai_error(status: int, message: str, param: str | None = None):
    from fastapi.responses import JSONResponse

    kind = "invalid_request_error" if status < 500 else "server_error"
    code = "model_not_found" if status == 404 else None
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(status_code=status, content=body)


def parse_embeddings_request(body: bytes, served: set[str]) -> dict:
    """The OpenAI embeddings request's fields, checked; raises BadRequest."""
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise BadRequest(f"the request body is not JSON ({error})") from None
    if not isinstance(request, dict):
        raise BadRequest("the request body must be a JSON object")
    if "input" not in request:
        raise BadRequest("`input` is missing: a string or a list of strings", param="input")
    items = request["input"]
    items = [items] if isinstance(items, str) else items
    model = request.get("model")
    if not isinstance(model, str) or model not in served:
        valid = ", ".join(sorted(served))
        raise BadRequest(f"model {model!r} is not served here; valid: {valid}", 404, "model")
    encoding = request.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise BadRequest(
            f"encoding_format {encoding!r}; valid: 'float', 'base64'", param="encoding_format"
        )
    dims = request.get("dimensions")
    if dims is not None and (not isinstance(dims, int) or isinstance(dims, bool)):
        raise BadRequest("dimensions must be an integer", param="dimensions")
    return {"items": items, "model": model, "encoding": encoding, "dimensions": dims}


def add_openai_routes(app, predictor) -> None:
    from fastapi.responses import ORJSONResponse

    encoder: Encoder = predictor.encoder
    # The served name picks the tower from the inputs; a tower's name (CLIP) picks it.
    served = {predictor.name} | {name for name in encoder.towers if name}

    async def embeddings(request):  # a plain Starlette endpoint: it gets the Request
        try:
            fields = parse_embeddings_request(await request.body(), served)
            tower = None if fields["model"] == predictor.name else fields["model"]
            vectors = await predictor.encode(fields["items"], tower, fields["dimensions"])
        except BadRequest as error:
            return openai_error(error.status, str(error), error.param)
        if fields["encoding"] == "base64":
            rows = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
        else:
            rows = vectors.tolist()
        return ORJSONResponse(
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": r} for i, r in enumerate(rows)
                ],
                "model": fields["model"],
                # Token counts are not kept: images have none, and counting costs a second pass.
                "usage": {"prompt_tokens": 0, "total_tokens": 0},
            }
        )

    for path in OPENAI_PATHS:
        app.add_route(path, embeddings, methods=["POST"])


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets a 413 before anyone parses it
    (uvicorn itself sets no limit)."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"").decode() or "0"
        if not length.isdigit() or int(length) > self.max_bytes:
            return await self._refuse(send)
        chunks, total, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                return await self._refuse(send)
            chunks.append(chunk)
            more = message.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        return await self.app(scope, replay, send)

    async def _refuse(self, send):
        message = f"the request body is larger than {self.max_bytes} bytes (--max-request-bytes)"
        body = json.dumps({"error": {"message": message, "type": "invalid_request_error"}})
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body.encode()})


def check_port(port: int, host: str = DEFAULT_HOST) -> None:
    if not 0 < port < 65536:
        raise FinetunerError(f"--port {port}: valid ports are 1 to 65535.")
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise FinetunerError(
                f"--host {host} --port {port}: cannot listen there ({error.strerror})."
            ) from None


def listen_on(kserve, host: str) -> None:
    """KServe's REST server always listens on 0.0.0.0: right in a pod, too open on a
    workstation. Its uvicorn config is read when the server starts, so set its host there."""
    base = kserve.model_server.RESTServer

    class RESTServer(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.config.host = host

    kserve.model_server.RESTServer = RESTServer


def serve(
    uri: str,
    *,
    port: int = DEFAULT_PORT,
    host: str = DEFAULT_HOST,
    name: str = "model",
    onnx: bool = False,
    int8: bool = False,
    truncate_dim: int | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
) -> None:
    """Load the export (every startup error is a FinetunerError), then serve until a signal."""
    if max_batch < 1:
        raise FinetunerError(f"--max-batch {max_batch}: valid: 1 or more.")
    if max_request_bytes < 1024:
        raise FinetunerError(f"--max-request-bytes {max_request_bytes}: valid: 1024 or more.")
    check_port(port, host)
    encoder = Encoder(uri, onnx=onnx, int8=int8, truncate_dim=truncate_dim, max_batch=max_batch)
    kserve = _import_kserve()
    listen_on(kserve, host)
    predictor = predictor_class()(name, encoder)
    app = kserve.model_server.app
    add_openai_routes(app, predictor)
    app.add_middleware(BodyLimit, max_bytes=max_request_bytes)
    towers = ", ".join(t for t in encoder.towers if t)
    print(
        f"serving {uri} as {name!r}{f' ({towers})' if towers else ''}, {encoder.dim} "
        f"dimensions, on {host}:{port}: /v1/models/{name}:predict, /v2/models/{name}/infer, "
        f"{' and '.join(OPENAI_PATHS)}",
        flush=True,
    )
    kserve.ModelServer(http_port=port, enable_grpc=False, workers=1).start([predictor])
