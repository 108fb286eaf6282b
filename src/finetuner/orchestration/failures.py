"""How a pipeline step fails, and how a local run reports it.

A step body runs inside `reported(step)`: its failure ends the step's log with one `error:`
line, and the step exits with 2 when it refused its input (a FinetunerError) or 1 for a
fault of ours. On a cluster the traceback of a fault stays in the step's log. In a local run
(kfp.local streams the step's log to the user's terminal) `run_locally` sets FAILURE_FILE:
the step writes its error there and the traceback to a file beside it, and the run's final
message is the step's own error.
"""

from __future__ import annotations

import json
import os
import re
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from finetuner.errors import FinetunerError, StepFailed, redact

FAILURE_FILE = "FINETUNER_STEP_FAILURE_FILE"


@contextmanager
def reported(step: str) -> Iterator[None]:
    """Run a step's body; its failure becomes one `error:` line and a meaningful exit."""
    try:
        yield
    except FinetunerError as exc:
        _fail(step, str(exc), exc.exit_status)
    except Exception as exc:
        message = f"internal error: {type(exc).__name__}: {exc}"
        record = os.environ.get(FAILURE_FILE)
        try:
            if not record:
                raise OSError  # on a cluster: the step's log is where the traceback goes
            log = Path(record).with_name(f"{step}-traceback.log")
            log.write_text(redact("".join(traceback.format_exception(exc))))
            message += f" (the full traceback is in {log})"
        except OSError:
            traceback.print_exc()
        _fail(step, message, 1)


def _fail(step: str, message: str, status: int):
    message = redact(message)
    print(f"error: {message}", file=sys.stderr, flush=True)
    record = os.environ.get(FAILURE_FILE)
    if record:
        failure = {"step": step, "error": message, "status": status}
        try:
            Path(record).write_text(json.dumps(failure))
        except OSError:  # the run then reports the step's failure without its message
            pass
    raise SystemExit(status)


def step_failure(error: Exception, record: Path) -> StepFailed:
    """The error of a local run that failed with kfp.local's `error`: the failing step's own
    message and status, as `reported` recorded them."""
    try:
        failure = json.loads(record.read_text())
        return StepFailed(f"step {failure['step']}: {failure['error']}", failure["status"])
    except (OSError, ValueError, KeyError):
        pass
    # The step died before it could say why (killed, out of memory, a crash in kfp).
    plain = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    task = re.search(r"(?:Inner task failed|Task): '?([\w.-]+)", plain)
    step = f"step {task.group(1)}" if task else "a step"
    return StepFailed(
        f"{step} failed without an error message ({plain}); its log is above.", exit_status=1
    )
