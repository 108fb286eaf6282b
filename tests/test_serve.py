"""`finetuner serve` through real clients (the openai package, httpx) on a loopback server,
and `finetuner deploy`'s manifests checked against KServe's and Kubernetes' schemas."""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import yaml

import finetuner
from finetuner.catalogue import lookup
from finetuner.cli import main
from finetuner.export import inference
from finetuner.export.publish import export
from finetuner.models import TextModel
from finetuner.serving.deploy import Deployment, check_model, manifests, validate
from finetuner.serving.encoder import Encoder, truncate

TEXTS = ["aardvark", "nocturnal burrowing mammal of Africa", "x", "a longer text " * 5]
METRICS = {"k": 10, "before": {"ndcg@10": 0.5}, "after": {"ndcg@10": 0.6}}
MAX_BATCH, MAX_BYTES = 8, 65536


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export") / "out"
    export(TextModel.pretrained(lookup("minilm-l6-en", max_length=32)), METRICS, str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def expected(exported):
    return finetuner.encode(finetuner.get_model(exported), TEXTS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory):
    """`finetuner serve` in its own process, as a pod runs it; yields its base URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, "-m", "finetuner", "serve", exported, "--port", str(port),
               "--name", "minilm", "--max-batch", str(MAX_BATCH),
               "--max-request-bytes", str(MAX_BYTES)]  # fmt: skip
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if process.poll() is not None:
                pytest.fail(f"finetuner serve exited {process.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{base}/v2/health/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail(f"finetuner serve did not get ready:\n{log.read_text()}")
        yield base
    finally:
        process.terminate()
        process.wait(timeout=60)


@pytest.mark.parametrize("path", ["/v1", "/openai/v1"])
# Unless told, the openai client asks for base64 (little-endian float32) and decodes it.
@pytest.mark.parametrize("encoding", [None, "float"])
def test_openai_client_gets_the_embeddings_of_encode(server, expected, path, encoding):
    import openai

    client = openai.OpenAI(base_url=server + path, api_key="unused", max_retries=0)
    extra = {"encoding_format": encoding} if encoding else {}
    reply = client.embeddings.create(model="minilm", input=TEXTS, **extra)
    got = np.array([d.embedding for d in sorted(reply.data, key=lambda d: d.index)])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert reply.model == "minilm"
    # OpenAI's `dimensions`: the first N, renormalised.
    short = client.embeddings.create(model="minilm", input=TEXTS[:2], dimensions=64)
    got = np.array([d.embedding for d in short.data])
    np.testing.assert_allclose(got, truncate(expected[:2], 64), atol=1e-5)


def test_concurrent_requests_each_get_their_own_embeddings(server, expected):
    import openai

    client = openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)
    jobs = [[TEXTS[i % 4], TEXTS[(i + 1) % 4]] for i in range(16)]

    def ask(texts):
        return np.array(
            [d.embedding for d in client.embeddings.create(model="minilm", input=texts).data]
        )

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(ask, jobs))
    for i, got in enumerate(replies):
        np.testing.assert_allclose(got, expected[[i % 4, (i + 1) % 4]], atol=1e-5)


def test_v1_and_v2_predict(server, expected):
    v1 = httpx.post(f"{server}/v1/models/minilm:predict", json={"instances": TEXTS})
    assert v1.status_code == 200, v1.text
    np.testing.assert_allclose(np.array(v1.json()["predictions"]), expected, atol=1e-5)

    request = {"inputs": [{"name": "text", "shape": [4], "datatype": "BYTES", "data": TEXTS}]}
    v2 = httpx.post(f"{server}/v2/models/minilm/infer", json=request)
    assert v2.status_code == 200, v2.text
    (output,) = v2.json()["outputs"]
    assert output["shape"] == [4, 384] and output["datatype"] == "FP32"
    np.testing.assert_allclose(np.array(output["data"]).reshape(4, 384), expected, atol=1e-5)

    assert httpx.get(f"{server}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{server}/v2/models/minilm/ready").status_code == 200


BAD = [
    ("/v1/embeddings", b"{not json", 400, "not JSON"),
    ("/v1/embeddings", {"model": "minilm"}, 400, "`input` is missing"),
    ("/v1/embeddings", {"model": "minilm", "input": [[101, 102]]}, 400, "token ids"),
    ("/v1/embeddings", {"model": "minilm", "input": ["a", ""]}, 400, "input[1] is an empty"),
    ("/v1/embeddings", {"model": "minilm", "input": []}, 400, "non-empty list"),
    ("/v1/embeddings", {"model": "gpt", "input": "a"}, 404, "valid: minilm"),
    ("/v1/embeddings", {"model": "minilm", "input": "a", "dimensions": 385}, 400, "1 to 384"),
    ("/v1/embeddings", {"model": "minilm", "input": "a", "encoding_format": "int"}, 400, "'float'"),
    ("/v1/embeddings", {"model": "minilm", "input": ["a"] * 9}, 400, "at most 8"),
    ("/v1/embeddings", {"model": "minilm", "input": "a" * MAX_BYTES}, 413, "larger than 65536"),
    ("/v1/models/minilm:predict", {"instances": [1]}, 400, "input[0] is int"),
    ("/v1/models/minilm:predict", {"texts": ["a"]}, 400, "a v1 request is a JSON object"),
    ("/v1/models/minilm:predict", b"{not json", 400, "Unrecognized request format"),
    ("/v1/models/other:predict", {"instances": ["a"]}, 404, "other"),
    ("/v2/models/minilm/infer",
     {"inputs": [{"name": "t", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, 400, "BYTES"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "status", "says"), BAD)
def test_bad_requests_get_a_4xx_that_says_why(server, path, body, status, says):
    if isinstance(body, bytes):
        reply = httpx.post(
            server + path, content=body, headers={"content-type": "application/json"}
        )
    else:
        reply = httpx.post(server + path, json=body)
    assert reply.status_code == status, reply.text
    assert says in reply.text
    assert "Traceback" not in reply.text


def test_openai_client_raises_on_a_bad_request(server):
    import openai

    client = openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="at most 8"):
        client.embeddings.create(model="minilm", input=["a"] * 9)


def test_truncate_dim_and_int8_load_through_the_encoder(exported, expected, tmp_path):
    np.testing.assert_allclose(
        Encoder(exported, truncate_dim=64).encode(TEXTS), truncate(expected, 64), atol=1e-5
    )
    # An int8 file is served when present (a copy of the fp32 graph stands in for one here).
    with_int8 = tmp_path / "export"
    shutil.copytree(exported, with_int8)
    shutil.copy(with_int8 / "onnx" / "model.onnx", with_int8 / "onnx" / "model.int8.onnx")
    onnx = inference.get_model(str(with_int8), is_onnx=True)
    np.testing.assert_allclose(
        Encoder(str(with_int8), int8=True).encode(TEXTS), onnx.encode(TEXTS), atol=1e-6
    )


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--int8"], "has no int8 ONNX model"),
        (["--truncate-dim", "385"], "valid: 1 to 384"),
        (["--max-batch", "0"], "--max-batch 0"),
    ],
)
def test_startup_errors_exit_2(exported, capsys, flags, says):
    assert main(["serve", exported, "--port", str(free_port()), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and says in err


def test_serving_a_folder_that_is_no_export_exits_2(tmp_path, capsys):
    assert main(["serve", str(tmp_path), "--port", str(free_port())]) == 2
    assert "is not a finished export" in capsys.readouterr().err


def test_a_busy_port_exits_2(exported, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["serve", exported, "--port", str(busy.getsockname()[1])]) == 2
    assert "cannot listen there" in capsys.readouterr().err


def test_deploy_dry_run_writes_a_valid_inference_service(tmp_path, capsys):
    output = tmp_path / "isvc.yaml"
    args = ["deploy", "s3://models/runs/one/", "--name", "minilm", "--namespace", "team",
            "--int8", "--dry-run", "--output", str(output)]  # fmt: skip
    assert main(args) == 0
    account, isvc = yaml.safe_load_all(output.read_text())
    validate([account, isvc])
    assert account["kind"] == "ServiceAccount" and account["secrets"] == [{"name": "finetuner-s3"}]
    predictor = isvc["spec"]["predictor"]
    assert predictor["serviceAccountName"] == account["metadata"]["name"]
    (container,) = predictor["containers"]
    assert container["image"] == "ghcr.io/finetuner-kfp/finetuner:0.1.0"
    assert container["command"] == ["finetuner", "serve", "/mnt/models"]
    assert container["args"] == [
        "--host", "0.0.0.0", "--port", "8080", "--name", "minilm", "--int8"
    ]  # fmt: skip
    assert {"name": "STORAGE_URI", "value": "s3://models/runs/one/"} in container["env"]
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "4Gi"}
    assert main(args) == 2  # never overwrites
    assert "exists" in capsys.readouterr().err


def test_deploy_a_version_of_the_model_registry(tmp_path):
    # The register step prints this URI; KServe's model-registry storage initializer
    # resolves it to the version's export folder.
    _, isvc = manifests(Deployment("model-registry://minilm-search/run-7", "minilm"))
    (container,) = isvc["spec"]["predictor"]["containers"]
    assert {"name": "STORAGE_URI", "value": "model-registry://minilm-search/run-7"} in (
        container["env"]
    )


def test_the_schema_checks_catch_what_kubernetes_would_refuse():
    account, isvc = manifests(Deployment("s3://models/runs/one/", "minilm"))
    with pytest.raises(finetuner.FinetunerError, match="unknown field 'predicter'"):
        check_model({**isvc, "spec": {"predicter": {}}}, "V1beta1InferenceService", "isvc")
    with pytest.raises(finetuner.FinetunerError, match="predictor"):
        check_model({**isvc, "spec": {}}, "V1beta1InferenceService", "isvc")
    container = isvc["spec"]["predictor"]["containers"][0]
    bad = {**container, "ports": [{"containerPort": "8080"}]}
    broken = {**isvc, "spec": {"predictor": {"containers": [bad]}}}
    with pytest.raises(finetuner.FinetunerError, match="containerPort"):
        validate([broken])
    with pytest.raises(finetuner.FinetunerError, match="secrets"):
        validate([{**account, "secrets": "finetuner-s3"}])


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["./export", "--name", "minilm"], "expected s3://bucket/prefix"),
        (["s3://models/p/", "--name", "MiniLM"], "--name 'MiniLM'"),
        (["s3://models/p/", "--name", "minilm", "--memory", "4 GB"], "not a Kubernetes quantity"),
        (["model-registry://minilm", "--name", "minilm"], "expected model-registry://NAME/VERSION"),
    ],
)
def test_deploy_refuses_bad_input(capsys, flags, says):
    assert main(["deploy", *flags, "--dry-run"]) == 2
    assert says in capsys.readouterr().err


@pytest.fixture(scope="module")
def image_export(tmp_path_factory):
    from finetuner import models

    folder = tmp_path_factory.mktemp("image-export") / "out"
    export(models.pretrained(lookup("efficientnet-lite0")), METRICS, str(folder))
    return str(folder)


def test_image_models_take_data_uris_and_refuse_what_training_data_may_not_be(
    image_export, tmp_path
):
    import base64
    import io

    from PIL import Image

    from finetuner.serving.encoder import BadRequest

    rng = np.random.default_rng(0)
    files, uris = [], []
    for i in range(2):
        image = Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        (path := tmp_path / f"{i}.png").write_bytes(buffer.getvalue())
        files.append(str(path))
        uris.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode())
    encoder = Encoder(image_export, max_batch=MAX_BATCH)
    expected = finetuner.encode(finetuner.get_model(image_export), files)
    np.testing.assert_allclose(encoder.encode(uris), expected, atol=1e-5)
    # The rules of training data: no loopback or private address, no local file, no bucket.
    for item, says in [
        ("http://127.0.0.1:9/x.png", "127.0.0.1"),
        (files[0], "reads no local files"),
        ("s3://bucket/x.png", "reads no local files"),
        ("data:text/plain;base64,aGk=", "data:image/<type>;base64"),
        ("data:image/png;base64,!!!", "not valid base64"),
        ("data:image/png;base64," + base64.b64encode(b"not a png").decode(), "input[0]"),
    ]:
        with pytest.raises(BadRequest, match=re.escape(says)):
            encoder.encode([item])
