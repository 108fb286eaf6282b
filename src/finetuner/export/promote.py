"""The promotion gate of recurring retrains.

Every run exports to its own folder; `latest/`, beside it, holds the model that serving
uses. A run replaces `latest/` only when its monitored metric beats the promoted model's
by at least `min_delta`, so a retrain on worse data never replaces a better model.
"""

from __future__ import annotations

import json
import uuid

from finetuner.errors import FinetunerError
from finetuner.io import claim, storage
from finetuner.io.claim import CLAIM_FILE, MANIFEST
from finetuner.io.staging import stage_dir

LATEST = "latest"
# `{run_id}` in output_uri becomes the run's id, so a schedule's runs each get a folder.
RUN_ID = "{run_id}"


def run_output(output_uri: str, run_id: str) -> str:
    """output_uri with `{run_id}` replaced by the run's id (unchanged without it)."""
    if RUN_ID in output_uri and not run_id.strip():
        raise FinetunerError(f"output_uri {output_uri!r} holds {RUN_ID}, but the run has no id.")
    return output_uri.replace(RUN_ID, run_id)


def latest_uri(export_uri: str) -> str:
    """`latest/` beside a run's export: s3://bkt/models/minilm/<run>/ -> s3://bkt/models/minilm/latest/."""
    if storage.is_s3(export_uri) and not storage.split_s3(export_uri)[1].strip("/"):
        raise FinetunerError(
            f"output_uri {export_uri!r}: promotion needs a parent folder for latest/, e.g. "
            "s3://bucket/models/minilm/{run_id}."
        )
    return storage.join(storage.parent(export_uri), LATEST)


def monitored_metric(name: str, metrics: dict) -> str:
    """The metric the gate compares: `auto` is ndcg@k for retrieval data and spearman for
    scored pairs; a name without `@k` gets the run's k."""
    after = metrics["after"]
    if name == "auto":
        name = "spearman" if metrics.get("kind") == "scored" else "ndcg"
    if name not in after and "@" not in name:
        name = f"{name}@{int(metrics['k'])}"  # KFP hands k back as a float
    if name not in after:
        raise FinetunerError(
            f"parameter promotion_metric: this run has no metric {name!r}; "
            f"it has {', '.join(sorted(after))} (or auto)."
        )
    return name


def check_metric_name(name: str) -> None:
    """Fail before training on a name no evaluation can report."""
    from finetuner.evaluation.metrics import METRICS

    valid = [*METRICS, "spearman", "pearson"]
    if name != "auto" and name.split("@")[0] not in valid:
        raise FinetunerError(
            f"parameter promotion_metric: unknown metric {name!r}; valid: auto, "
            f"{', '.join(valid)} (retrieval metrics may end in @k)."
        )


def decide(new: float, current: float | None, min_delta: float) -> tuple[bool, str]:
    """Promote when nothing is promoted yet, or when `new` beats `current` by at least
    min_delta and by more than nothing (a tie keeps the model that serves)."""
    if current is None:
        return True, "nothing was promoted yet"
    gain = new - current
    # The tolerance keeps 0.7 - 0.6 (0.0999...) from missing a min_delta of 0.1.
    if gain > 0 and gain >= min_delta - 1e-12:
        return True, f"improved by {gain:+.4f} (needed {min_delta:+.4f})"
    return False, f"changed by {gain:+.4f}, needed an improvement of at least {min_delta:+.4f}"


def current_metrics(latest: str) -> dict | None:
    """The promoted model's metrics, or None when latest/ holds no complete export."""
    if not storage.exists(storage.join(latest, MANIFEST)):
        return None
    return json.loads(storage.read_text(storage.join(latest, "metrics.json")))


def publish(export_uri: str, latest: str) -> None:
    """Copy a finished export to latest/: the manifest goes first out and last in, so a
    reader never takes a half-copied latest/ for a whole model."""
    manifest = storage.read_text(storage.join(export_uri, MANIFEST))
    listed = {f["path"] for f in json.loads(manifest)["files"]}
    storage.delete(storage.join(latest, MANIFEST))
    with stage_dir("promote") as stage:
        for path in sorted(listed):
            storage.download_file(storage.join(export_uri, path), stage / path)
        # Files of the previous model that the new one lacks would mix two models.
        for uri in [] if storage.is_empty_prefix(latest) else storage.list_files(latest):
            if _relative(uri, latest) not in listed | {CLAIM_FILE}:
                storage.delete(uri)
        storage.upload_dir(stage, latest)
    storage.write_text(storage.join(latest, MANIFEST), manifest)


def _relative(uri: str, folder: str) -> str:
    return str(uri)[len(str(folder).rstrip("/")) + 1 :]


def promote(
    export_uri: str,
    metrics: dict,
    enabled: bool,
    metric: str = "auto",
    min_delta: float = 0.0,
    run_id: str = "",
    force_claim: bool = False,
) -> dict:
    """Run the gate for a finished export; the decision, with its reason.

    The run claims latest/ (finetuner.io.claim) while it compares and copies, so that two runs
    never promote into it at once; `force_claim` takes over a crashed run's claim."""
    if min_delta < 0:
        raise FinetunerError(f"parameter promotion_min_delta: must be >= 0, got {min_delta}.")
    if not enabled:  # nothing to check: a metric name that fits no data cannot fail a run
        return _result(False, "promotion is off (promote=false)", "", None, None, "")
    name = monitored_metric(metric, metrics)
    new = float(metrics["after"][name])
    latest = latest_uri(export_uri)
    run_id = run_id or f"promote-{uuid.uuid4().hex[:12]}"
    claim.take(latest, run_id, force_claim, parameter="promote")
    try:
        return _gate(export_uri, metrics, name, new, latest, min_delta)
    finally:
        claim.release(latest, run_id)


def _gate(export_uri: str, metrics: dict, name: str, new: float, latest: str, min_delta: float):
    current = current_metrics(latest)
    old = None
    if current is not None:
        if name not in current.get("after", {}):
            reason = f"the promoted model at {latest} has no {name} to compare with"
            return _result(False, reason, name, new, None, latest)
        old = float(current["after"][name])
    promoted, reason = decide(new, old, min_delta)
    if promoted:
        publish(export_uri, latest)
    return _result(promoted, reason, name, new, old, latest)


def _result(promoted, reason, name, new, old, latest) -> dict:
    return {
        "promoted": promoted,
        "reason": reason,
        "metric": name,
        "new": new,
        "current": old,
        "latest": latest,
    }
