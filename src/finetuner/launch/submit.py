"""Start runs and recurring runs of a compiled pipeline on a KFP cluster: `finetuner submit`
and `finetuner schedule`.

Arguments arrive on the command line as `name=value` text. They are typed here from the
compiled pipeline's own parameter types, so that the KFP API receives 5 as a number and
{"margin": 0.1} as an object: the backend refuses strings for int, bool and dict parameters
(which is why `kfp recurring-run create`, which sends strings, cannot schedule this pipeline).
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path

import yaml

from finetuner.errors import FinetunerError, add_secret, add_url_secrets, redact

_TYPES = {
    "STRING": "a string",
    "NUMBER_INTEGER": "an integer",
    "NUMBER_DOUBLE": "a number",
    "BOOLEAN": "true or false",
    "STRUCT": "a JSON object",
    "LIST": "a JSON list",
}


def default_pipeline() -> Path:
    """The compiled finetune pipeline shipped with the package."""
    return Path(str(resources.files("finetuner.pipelines") / "finetune.yaml"))


def pipeline_parameters(pipeline_file: str | Path) -> dict[str, dict]:
    """The root parameters of a compiled pipeline: name -> its inputDefinitions entry."""
    path = Path(pipeline_file)
    if not path.is_file():
        raise FinetunerError(f"--pipeline: {path} does not exist; compile it with "
                             "`finetuner compile`.")  # fmt: skip
    try:
        spec = next(yaml.safe_load_all(path.read_text()))
        return spec["root"]["inputDefinitions"]["parameters"]
    except (yaml.YAMLError, KeyError, TypeError, StopIteration) as exc:
        raise FinetunerError(
            f"--pipeline: {path} is not a compiled KFP pipeline ({exc})."
        ) from None


def parse_value(name: str, text: str, definition: dict):
    """One `name=value` argument, typed as the pipeline declares it."""
    kind = definition.get("parameterType", "STRING")
    expected = _TYPES.get(kind, kind)
    value = text
    try:
        if kind == "NUMBER_INTEGER":
            value = int(text)
        elif kind == "NUMBER_DOUBLE":
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
        elif kind == "BOOLEAN":
            lowered = text.strip().lower()
            if lowered not in ("true", "false"):
                raise ValueError
            value = lowered == "true"
        elif kind in ("STRUCT", "LIST"):
            value = json.loads(text)
            if not isinstance(value, dict if kind == "STRUCT" else list):
                raise ValueError
    except ValueError:
        raise FinetunerError(f"parameter {name}: expected {expected}, got {text!r}.") from None
    literals = definition.get("literals")
    if literals and value not in literals:
        raise FinetunerError(
            f"parameter {name}: {text!r} is not one of its values: {', '.join(literals)}."
        )
    return value


# The pipelines' parameters that take a URI, and whether it must name a key (a file or an
# output) rather than possibly a whole bucket.
URI_PARAMETERS = {
    "train_data": True, "eval_data": True, "output_uri": True, "query_data": True,
    "corpus_data": True, "weights": False, "model_artifact": False,
    "relation_miner_weights": False, "cross_encoder_weights": False,
}  # fmt: skip


def parse_arguments(pairs: list[str], parameters: dict[str, dict]) -> dict:
    """`name=value` texts -> typed arguments; every required parameter must be given."""
    arguments = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise FinetunerError(f"argument {pair!r}: expected NAME=VALUE, e.g. epochs=5.")
        if name not in parameters:
            raise FinetunerError(
                f"unknown parameter {name!r}; the pipeline's parameters: "
                f"{', '.join(sorted(parameters))}."
            )
        if name in arguments:
            raise FinetunerError(f"parameter {name}: given twice.")
        arguments[name] = parse_value(name, text, parameters[name])
        check_declared(name, arguments[name])
        if name in URI_PARAMETERS and arguments[name]:
            from finetuner.io import storage

            storage.check_uri(arguments[name], name, need_key=URI_PARAMETERS[name])
    missing = sorted(
        n for n, d in parameters.items() if not d.get("isOptional") and n not in arguments
    )
    if missing:
        raise FinetunerError(f"missing required parameter(s): {', '.join(missing)}.")
    if "registered_model_name" in parameters:
        from finetuner.export.model_registry import enabled

        enabled(arguments.get("model_registry_url", ""), arguments.get("registered_model_name", ""))
    return arguments


def check_declared(name: str, value) -> None:
    """A parameter that finetuner declares (finetuner.parameters) is checked as a run checks
    it, before any request: `epochs=five` fails here, though the pipeline types epochs as
    text (a number, or auto)."""
    from finetuner.parameters import RunParameters
    from finetuner.parameters.pipelines import subset

    if name in RunParameters.model_fields:
        subset(name, [name]).from_strings({name: value})


def check_cron(cron: str) -> str:
    """KFP's cron: 6 fields, seconds first."""
    fields = cron.split()
    if len(fields) != 6:
        raise FinetunerError(
            f"--cron: KFP's cron has 6 fields, seconds first, e.g. '0 0 3 * * *' for 03:00 "
            f"every day; {cron!r} has {len(fields)}."
        )
    return " ".join(fields)


def client(host: str, namespace: str | None = None, token: str | None = None):
    """A kfp.Client for `host`; failures to reach it become one clear error. The token, and
    any in the host's userinfo, are kept out of every message."""
    add_secret(token)
    add_url_secrets(host)
    if not host.startswith(("http://", "https://")):
        raise FinetunerError(redact(f"--host: {host!r} must start with http:// or https://."))
    import warnings

    import kfp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # kfp's note on backend versions
        with _api_errors(host):
            kwargs = {"namespace": namespace} if namespace else {}
            return _client_class(kfp)(host=host, existing_token=token or None, **kwargs)


def _client_class(kfp):
    class Client(kfp.Client):
        """kfp.Client, whose start-up health check asks once and lets a refusal through:
        kfp's retries 5 times over 25 s, logging each traceback (and the server's reply)."""

        def get_kfp_healthz(self, sleep_duration: int = 5):
            return self._healthz_api.healthz_service_get_healthz()

    return Client


class _api_errors:
    """Turns kfp's API and connection errors into a FinetunerError that names the host."""

    def __init__(self, host: str):
        self.host = host

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or isinstance(exc, FinetunerError):
            return False
        from kfp_server_api.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        if isinstance(exc, ApiException):
            body = " ".join(str(exc.body or "").split())  # one line, whatever the server sent
            detail = f"HTTP {exc.status} {exc.reason}: {body[:500]}"
        elif isinstance(exc, HTTPError | TimeoutError | OSError):
            detail = f"could not connect ({exc})"
        else:
            return False
        raise FinetunerError(redact(f"KFP API at {self.host}: {detail}")) from None


def submit(
    host: str,
    experiment: str,
    arguments: dict,
    pipeline_file: str | Path,
    namespace: str | None = None,
    token: str | None = None,
    run_name: str | None = None,
    pipeline_root: str | None = None,
    service_account: str | None = None,
) -> str:
    """Start one run; its id."""
    kfp_client = client(host, namespace, token)
    with _api_errors(host):
        result = kfp_client.create_run_from_pipeline_package(
            str(pipeline_file),
            arguments=arguments,
            run_name=run_name,
            experiment_name=experiment,
            namespace=namespace,
            pipeline_root=pipeline_root,
            service_account=service_account,
        )
    return result.run_id


def schedule(
    host: str,
    experiment: str,
    name: str,
    cron: str,
    arguments: dict,
    pipeline_file: str | Path,
    max_concurrency: int = 1,
    namespace: str | None = None,
    token: str | None = None,
    pipeline_root: str | None = None,
    service_account: str | None = None,
    no_catchup: bool = True,
) -> str:
    """Create a recurring run; its id."""
    cron = check_cron(cron)
    if max_concurrency < 1:
        raise FinetunerError(f"--max-concurrency: must be >= 1, got {max_concurrency}.")
    kfp_client = client(host, namespace, token)
    with _api_errors(host):
        experiment_id = kfp_client.create_experiment(experiment, namespace=namespace).experiment_id
        result = kfp_client.create_recurring_run(
            experiment_id=experiment_id,
            job_name=name,
            cron_expression=cron,
            max_concurrency=max_concurrency,
            no_catchup=no_catchup,
            params=arguments,
            pipeline_package_path=str(pipeline_file),
            pipeline_root=pipeline_root,
            service_account=service_account,
        )
    return result.recurring_run_id
