"""Contract tests of `finetuner submit` and `finetuner schedule`: no KFP backend can run
here, so a recording HTTP server on loopback answers the v2beta1 endpoints that kfp.Client
calls, and the tests check the JSON bodies it receives."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from finetuner.cli import main

API = "/apis/v2beta1"


class FakeKFP(BaseHTTPRequestHandler):
    """Answers healthz, experiments (list and create), runs and recurringruns (create)."""

    def log_message(self, *args):  # keep the test output clean
        pass

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        server = self.server
        server.requests.append(("GET", self.path, None, self.headers.get("Authorization")))
        path = self.path.split("?")[0]
        if path == f"{API}/healthz":
            return self._reply(200, {"multi_user": False})
        if path == f"{API}/experiments":
            return self._reply(
                200, {"experiments": server.experiments} if server.experiments else {}
            )
        self._reply(404, {"error": "not found"})

    def do_POST(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        server.requests.append(("POST", self.path, body, self.headers.get("Authorization")))
        if server.fail_with:
            return self._reply(server.fail_with, {"error": "backend says no"})
        if self.path == f"{API}/experiments":
            experiment = {**body, "experiment_id": "exp-1"}
            server.experiments.append(experiment)
            return self._reply(200, experiment)
        if self.path == f"{API}/runs":
            return self._reply(200, {**body, "run_id": "run-1"})
        if self.path == f"{API}/recurringruns":
            return self._reply(200, {**body, "recurring_run_id": "rr-1"})
        self._reply(404, {"error": "not found"})


@pytest.fixture
def kfp_api(monkeypatch, tmp_path):
    # kfp.Client reads a context file under $HOME; keep the developer's out of the test.
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("KF_PIPELINES_ENDPOINT", "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeKFP)
    server.requests, server.experiments, server.fail_with = [], [], None
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def host(server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def posted(server, path: str) -> list[dict]:
    return [body for method, p, body, _ in server.requests if method == "POST" and p == API + path]


PARAMS = [
    "train_data=s3://data/pairs.csv",
    "output_uri=s3://models/minilm/{run_id}",
    "model=minilm-l6-en",
    "epochs=5",
    "learning_rate=1e-4",
    "promote=true",
    'loss_options={"margin": 0.1}',
    'tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]',
]


def test_submit_sends_typed_arguments(kfp_api, capsys):
    code = main(["submit", "--host", host(kfp_api), "--experiment", "nightly", "--token",
                 "t0ken", "--pipeline-root", "s3://kfp/root", *PARAMS])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert "run run-1" in capsys.readouterr().out
    (experiment,) = posted(kfp_api, "/experiments")
    assert experiment["display_name"] == "nightly"
    (run,) = posted(kfp_api, "/runs")
    assert run["experiment_id"] == "exp-1"
    assert run["runtime_config"]["pipeline_root"] == "s3://kfp/root"
    # JSON types as the pipeline declares them: the backend refuses "5" for an int parameter,
    # and 5 for a text one (epochs: a number, or auto).
    assert run["runtime_config"]["parameters"] == {
        "train_data": "s3://data/pairs.csv",
        "output_uri": "s3://models/minilm/{run_id}",
        "model": "minilm-l6-en",
        # epochs and learning_rate are text in the pipeline: a number, or auto.
        "epochs": "5",
        "learning_rate": "1e-4",
        "promote": True,
        "loss_options": {"margin": 0.1},
        "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }
    # The compiled pipeline travels whole: its spec and the Kubernetes settings.
    assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "finetune"
    assert "exec-train" in run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"][
        "deploymentSpec"]["executors"]  # fmt: skip
    assert {auth for *_, auth in kfp_api.requests} == {"Bearer t0ken"}


def test_schedule_sends_cron_and_concurrency(kfp_api, capsys, tmp_path):
    token = tmp_path / "token"
    token.write_text("sa-token\n")  # as a projected service account token is mounted
    code = main(["schedule", "--host", host(kfp_api), "--experiment", "retrains", "--namespace",
                 "team-a", "--cron", "0 0 3 * * *", "--max-concurrency", "2", "--name",
                 "minilm-nightly", "--token-file", str(token), *PARAMS])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert "recurring run rr-1" in capsys.readouterr().out
    (experiment,) = posted(kfp_api, "/experiments")
    assert experiment["namespace"] == "team-a"
    (job,) = posted(kfp_api, "/recurringruns")
    assert job["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * *"}}
    assert job["max_concurrency"] == 2 and job["no_catchup"] is True
    assert job["mode"] == "ENABLE" and job["display_name"] == "minilm-nightly"
    assert job["experiment_id"] == "exp-1"
    assert job["runtime_config"]["parameters"]["epochs"] == "5"  # text: a number, or auto
    assert job["runtime_config"]["parameters"]["loss_options"] == {"margin": 0.1}
    assert {auth for *_, auth in kfp_api.requests} == {"Bearer sa-token"}


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["epochs=five"],
            "parameter epochs: invalid value 'five'. Valid: an integer >= 1, or auto",
        ),
        (
            ["learning_rate=2"],
            "parameter learning_rate: invalid value 2. Valid: a number in (0, 1)",
        ),
        (["promote=yes"], "parameter promote: expected true or false, got 'yes'"),
        (["loss_options=[1]"], "parameter loss_options: expected a JSON object"),
        (["pooler=median"], "parameter pooler: 'median' is not one of its values: auto, mean, cls"),
        (["epoch=5"], "unknown parameter 'epoch'; the pipeline's parameters: batch_size"),
        (["epochs"], "argument 'epochs': expected NAME=VALUE"),
        (["eval_data=s3://"], "parameter eval_data: 's3://' names no bucket"),
        (["model_artifact=S3://models/v1"], "parameter model_artifact: 'S3://models/v1' is not"),
        (["--pipeline-root", "s3:/kfp/root"], "parameter pipeline_root: 's3:/kfp/root' is not"),
        (["--pipeline-root", "kfp/root"], "expected s3://bucket/prefix"),
    ],
)
def test_bad_arguments_fail_before_any_request(kfp_api, capsys, extra, message):
    code = main(["submit", "--host", host(kfp_api), "--experiment", "x", *PARAMS[:2], *extra])
    assert code == 2 and message in capsys.readouterr().err
    assert kfp_api.requests == []


def test_missing_parameter_bad_cron_and_bad_pipeline(kfp_api, capsys, tmp_path):
    assert main(["submit", "--host", host(kfp_api), "--experiment", "x", PARAMS[0]]) == 2
    assert "missing required parameter(s): output_uri." in capsys.readouterr().err
    code = main(["schedule", "--host", host(kfp_api), "--experiment", "x", "--cron",
                 "0 3 * * *", *PARAMS[:2]])  # fmt: skip
    assert code == 2 and "6 fields, seconds first" in capsys.readouterr().err
    missing = str(tmp_path / "nope.yaml")
    code = main(["submit", "--host", host(kfp_api), "--experiment", "x", "--pipeline", missing])
    assert code == 2 and "nope.yaml does not exist" in capsys.readouterr().err
    assert kfp_api.requests == []


def test_a_refusing_backend_is_reported_with_its_host(kfp_api, capsys):
    kfp_api.fail_with = 400
    code = main(["submit", "--host", host(kfp_api), "--experiment", "x", "--namespace", "ns",
                 *PARAMS[:2]])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and f"KFP API at {host(kfp_api)}: HTTP 400" in err and "backend says no" in err


def test_the_packaged_pipeline_is_the_compiled_one():
    from finetuner.launch.submit import default_pipeline

    repo = Path(__file__).resolve().parent.parent / "pipelines" / "finetune.yaml"
    assert default_pipeline().read_text() == repo.read_text()


def test_an_unreachable_host_is_named(capsys, monkeypatch, tmp_path):
    import socket

    monkeypatch.setenv("HOME", str(tmp_path))
    with socket.socket() as sock:  # a loopback port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = main(["submit", "--host", f"http://127.0.0.1:{port}", "--experiment", "x",
                 "--namespace", "ns", *PARAMS[:2]])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and f"KFP API at http://127.0.0.1:{port}: could not connect" in err
    assert main(["submit", "--host", "kfp.example.com", "--experiment", "x", *PARAMS[:2]]) == 2
    assert "--host: 'kfp.example.com' must start with http:// or https://" in (
        capsys.readouterr().err
    )
