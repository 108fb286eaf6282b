"""A Kubeflow Model Registry REST server on loopback, for the register step's tests.

It serves the endpoints of the registry's OpenAPI schema (`/api/model_registry/v1/...`) that
the `model-registry` client calls to register a model, and checks every request body against
the schema's models, which the client package ships (`mr_openapi.models`): a body the real
server would refuse gets a 422 here too. It keeps every request, and can be told to fail the
next requests (`fail`) or to demand a bearer token (`token`).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from mr_openapi import models as mr

BASE = "/api/model_registry/v1"


class Registry:
    def __init__(self, token: str | None = None):
        self.token = token
        self.requests: list[dict] = []
        self.failures: list[tuple[str, str, int]] = []  # (method, path end, status), once each
        self.registered_models: dict[str, dict] = {}
        self.versions: dict[str, dict] = {}
        self.artifacts: dict[str, dict] = {}  # by id; "_version" holds the parent version
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> str:
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                registry._handle(self, "GET")

            def do_POST(self):
                registry._handle(self, "POST")

            def do_PATCH(self):
                registry._handle(self, "PATCH")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def fail(self, status: int, method: str = "", path_end: str = "", times: int = 1) -> None:
        """Answer `status` to the next `times` requests of `method` whose path ends with
        `path_end` (any, when empty)."""
        self.failures.extend([(method, path_end, status)] * times)

    def _injected(self, method: str, path: str) -> int | None:
        for i, (m, end, status) in enumerate(self.failures):
            if m in ("", method) and path.endswith(end):
                del self.failures[i]
                return status
        return None

    def version(self, model: str, name: str) -> dict | None:
        rm = self.registered_models.get(model)
        return next(
            (
                v
                for v in self.versions.values()
                if rm and v["registeredModelId"] == rm["id"] and v["name"] == name
            ),
            None,
        )

    def artifacts_of(self, version_id: str) -> list[dict]:
        return [a for a in self.artifacts.values() if a["_version"] == version_id]

    # ------------------------------------------------------------ HTTP

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(h.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        length = int(h.headers.get("Content-Length") or 0)
        body = json.loads(h.rfile.read(length)) if length else None
        with self._lock:
            self.requests.append(
                {
                    "method": method,
                    "path": url.path,
                    "query": query,
                    "body": body,
                    "authorization": h.headers.get("Authorization"),
                }
            )
            if (injected := self._injected(method, url.path)) is not None:
                status, payload = injected, {"code": "", "message": "injected fault"}
            elif self.token and h.headers.get("Authorization") != f"Bearer {self.token}":
                status, payload = 401, {"code": "", "message": "unauthorized"}
            else:
                status, payload = self._route(method, url.path, query, body)
        data = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _route(self, method: str, path: str, query: dict, body) -> tuple[int, dict]:
        if not path.startswith(BASE):
            return 404, _error("no such path")
        parts = path[len(BASE) :].strip("/").split("/")
        try:
            if method == "GET" and parts == ["registered_models"]:
                return 200, _list(mr.RegisteredModelList, list(self.registered_models.values()))
            if method == "GET" and parts == ["registered_model"]:
                found = self.registered_models.get(query.get("name", ""))
                return (200, found) if found else (404, _error("no such registered model"))
            if method == "POST" and parts == ["registered_models"]:
                mr.RegisteredModelCreate.from_dict(body)
                if body["name"] in self.registered_models:
                    return 409, _error("a registered model of that name exists")
                created = self._new(mr.RegisteredModel, body, state="LIVE")
                self.registered_models[body["name"]] = created
                return 201, created
            if method == "GET" and parts == ["model_version"]:
                parent = query.get("parentResourceId")
                found = next(
                    (
                        v
                        for v in self.versions.values()
                        if v["name"] == query.get("name") and v["registeredModelId"] == parent
                    ),
                    None,
                )
                return (200, found) if found else (404, _error("no such model version"))
            if method == "POST" and parts == ["model_versions"]:
                mr.ModelVersionCreate.from_dict(body)
                parents = {m["id"] for m in self.registered_models.values()}
                if body["registeredModelId"] not in parents:
                    return 404, _error("no such registered model")
                created = self._new(mr.ModelVersion, body, state="LIVE")
                self.versions[created["id"]] = created
                return 201, created
            if method == "GET" and parts[:1] == ["model_versions"] and len(parts) == 2:
                found = self.versions.get(parts[1])
                return (200, found) if found else (404, _error("no such model version"))
            if parts[:1] == ["model_versions"] and parts[2:] == ["artifacts"]:
                if parts[1] not in self.versions:
                    return 404, _error("no such model version")
                if method == "GET":
                    items = [_public(a) for a in self.artifacts_of(parts[1])]
                    return 200, _list(mr.ArtifactList, items)
                mr.Artifact.from_dict(body)  # the oneOf of the artifact kinds
                created = self._new(mr.ModelArtifact, body, state="LIVE")
                self.artifacts[created["id"]] = {**created, "_version": parts[1]}
                return 200, created
            if method == "GET" and parts == ["model_artifact"]:
                found = next(
                    (
                        a
                        for a in self.artifacts.values()
                        if a["_version"] == query.get("parentResourceId")
                        and a.get("name") == query.get("name")
                    ),
                    None,
                )
                return (200, _public(found)) if found else (404, _error("no such model artifact"))
        except (ValueError, TypeError, KeyError) as e:  # a body the schema refuses
            return 422, _error(f"invalid body: {e}")
        return 404, _error(f"{method} {path} is not served here")

    def _new(self, model, body: dict, **extra) -> dict:
        now = str(int(time.time() * 1000))
        record = {
            **body,
            **extra,
            "id": str(next(self._ids)),
            "createTimeSinceEpoch": now,
            "lastUpdateTimeSinceEpoch": now,
        }
        # The answer is what the schema's full model makes of it.
        return model.from_dict(record).to_dict()


def _public(artifact: dict | None) -> dict | None:
    return None if artifact is None else {k: v for k, v in artifact.items() if k != "_version"}


def _list(model, items: list[dict]) -> dict:
    payload = {"items": items, "nextPageToken": "", "pageSize": len(items), "size": len(items)}
    return model.from_dict(payload).to_dict()


def _error(message: str) -> dict:
    return {"code": "", "message": message}
