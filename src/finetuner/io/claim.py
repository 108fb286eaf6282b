"""One output, one writer.

A run claims its output location before it reads any data, by creating a claim file there
exclusively (a hard link locally, a conditional write on S3): of two runs with one output,
the second fails at once and names the first. Every step that writes under the output checks
that its run still holds the claim; the export releases it once its manifest is written, as a
finished export is refused as an output for good. A claim left by a crashed run is taken over
by the same run id (a retried KFP run resumes) or by an explicit `force_claim`.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import UTC, datetime

from finetuner.errors import FinetunerError
from finetuner.io import storage

# The file an export writes last: an output with it holds a finished export.
MANIFEST = "manifest.json"
# A hidden name: no export lists it, and it is gone once the export is whole.
CLAIM_FILE = ".finetuner-claim.json"
# What a run may leave under its output before its export is whole, where a rerun resumes:
# the claim (and, for a moment, its staged copy or a writability probe), checkpoints and
# synthesized rows.
RUN_LEFTOVERS = (".finetuner-", "checkpoints/", "synthesized/")
FORCE_HINT = (
    "if that run is no longer running, check, then take the output over with --force-claim "
    "(fit(force_claim=True); pipeline parameter force_claim=true)"
)


def claim_uri(output_uri: str) -> str:
    return storage.join(output_uri, CLAIM_FILE)


def holder(output_uri: str) -> dict | None:
    """The claim on an output ({"run_id", "claimed", "host", "pid"}), or None."""
    uri = claim_uri(output_uri)
    if not storage.exists(uri):
        return None
    try:
        return json.loads(storage.read_text(uri))
    except (FinetunerError, json.JSONDecodeError):
        # Deleted since, or not ours: described as held by an unknown run.
        return {"run_id": "?", "claimed": "?"}


def _record(run_id: str) -> bytes:
    return json.dumps(
        {
            "run_id": run_id,
            "claimed": datetime.now(UTC).isoformat(timespec="seconds"),
            "host": socket.gethostname(),
            "pid": os.getpid(),
        },
        indent=2,
    ).encode()


def _held_by(claim: dict) -> str:
    return f"run {claim.get('run_id')} (claimed {claim.get('claimed')} on {claim.get('host', '?')})"


def take(output_uri: str, run_id: str, force: bool = False, parameter: str = "output_uri") -> None:
    """Claim `output_uri` for `run_id`; fail, naming the holder, if another run holds it."""
    if not run_id.strip():
        raise FinetunerError(f"cannot claim {output_uri}: the run has no id.")
    for _ in range(2):  # once more if the holder released it between our two looks
        if storage.create_exclusive(claim_uri(output_uri), _record(run_id)):
            return
        claim = holder(output_uri)
        if claim is not None:
            break
    if claim is not None and claim.get("run_id") == run_id:
        return  # the same run again: a retried step or run resumes
    if force:
        print(f"taking over {output_uri} from {_held_by(claim or {})}", flush=True)
        storage.write_bytes(claim_uri(output_uri), _record(run_id))
        return
    raise FinetunerError(
        f"parameter {parameter}: {output_uri} is being written by {_held_by(claim or {})}; "
        f"one output takes one run: choose another output, or {FORCE_HINT}."
    )


def check_held(output_uri: str, run_id: str) -> None:
    """Fail unless `run_id` still holds the claim: never write over another run's output."""
    claim = holder(output_uri)
    if claim is None or claim.get("run_id") != run_id:
        now = "nobody holds it now" if claim is None else f"it is held by {_held_by(claim)}"
        raise FinetunerError(
            f"run {run_id} no longer holds its claim on {output_uri} ({now}); it stops "
            "rather than write over another run's output."
        )


def release(output_uri: str, run_id: str) -> None:
    """Drop the claim if `run_id` holds it (another run's claim is left alone)."""
    claim = holder(output_uri)
    if claim is not None and claim.get("run_id") == run_id:
        storage.delete(claim_uri(output_uri))


def check_output(output_uri: str, parameter: str = "output_uri") -> None:
    """Refuse, before any work, an output that is a file, that cannot be written, that
    holds a finished export, or that is a folder holding something other than a run's own
    leftovers (nothing the user had is overwritten)."""
    storage.check_uri(output_uri, parameter)
    found = storage.kind(output_uri)
    if found == "file":
        raise FinetunerError(
            f"parameter {parameter}: {output_uri} is a file; expected a new or empty folder."
        )
    storage.check_writable(output_uri, parameter, folder=True)
    check_output_free(output_uri)
    if found == "folder":
        foreign = [
            uri
            for uri in storage.list_files(output_uri)
            if not _relative(uri, output_uri).startswith(RUN_LEFTOVERS)
        ]
        if foreign:
            raise FinetunerError(
                f"parameter {parameter}: {output_uri} is a folder that holds other files "
                f"({_relative(foreign[0], output_uri)}"
                f"{f' and {len(foreign) - 1} more' if len(foreign) > 1 else ''}) and no "
                "export; choose a new or empty folder."
            )


def claim_output(
    output_uri: str, run_id: str, force: bool = False, parameter: str = "output_uri"
) -> str:
    """Check `output_uri` (check_output) and claim it for `run_id`; the run id."""
    check_output(output_uri, parameter)
    take(output_uri, run_id, force, parameter)
    try:
        check_output_free(output_uri)  # an export finished between the check and the claim
    except FinetunerError:
        release(output_uri, run_id)
        raise
    return run_id


def _relative(uri: str, folder: str) -> str:
    if storage.is_s3(uri):
        return str(uri)[len(str(folder).rstrip("/")) + 1 :]
    return storage.local_path(uri).relative_to(storage.local_path(folder)).as_posix()


def check_output_free(output_uri: str) -> None:
    """Refuse to overwrite a finished export: nothing the user already had is lost."""
    if storage.exists(storage.join(output_uri, MANIFEST)):
        raise FinetunerError(
            f"{output_uri} already holds an exported model ({MANIFEST} exists); "
            "choose a new output location."
        )
