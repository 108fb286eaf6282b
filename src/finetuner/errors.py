"""The one exception type that reaches users as a clean message instead of a traceback,
and the redaction that keeps secrets out of every message."""

from __future__ import annotations

import base64
import os
import re
from urllib.parse import quote, unquote


class FinetunerError(Exception):
    """A problem with the user's input or environment: the message says what, where and
    what is valid. The CLI prints it and exits with `exit_status`: 2, bad input."""

    exit_status = 2


class BadItem(FinetunerError):
    """One item of the data (an image, a mesh, a media URL) that cannot be used: missing,
    too big, corrupt or refused. The message names the item, what is wrong and what is
    valid; readers prefix it with the data file, line and column. A training loader skips
    such items and counts them instead of stopping."""


class StepFailed(FinetunerError):
    """A step of a local pipeline run failed: the message names the step and gives its own
    last error. The exit status is the step's: 2 when it refused its input, 1 for a fault."""

    def __init__(self, message: str, exit_status: int = 2):
        super().__init__(message)
        self.exit_status = exit_status


# Environment variables whose values never appear in a message.
SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "KF_PIPELINES_TOKEN")
_secrets: set[str] = set()
# scheme://user:password@ -> scheme://***@ (the userinfo of any URL in a message).
_USERINFO = re.compile(r"\b([a-z][a-z0-9+.-]*://)[^/\s@]+@", re.IGNORECASE)
HIDDEN = "***"


def add_secret(value: str | None) -> None:
    """Redact `value` (a token, a password) from every later message, in the forms a server
    may echo it back: as given, URL-quoted and, for `user:password`, as basic auth."""
    if not value or len(value) < 4:  # a short value would blank out ordinary words
        return
    _secrets.update({value, quote(value, safe=""), unquote(value)})
    if ":" in value:
        _secrets.add(base64.b64encode(value.encode()).decode())


def add_url_secrets(url: str | None) -> None:
    """The userinfo of `url`, e.g. https://user:token@host/, is a secret."""
    match = re.match(r"[a-z][a-z0-9+.-]*://([^/\s@]+)@", url or "", re.IGNORECASE)
    if match:
        userinfo = match.group(1)
        add_secret(userinfo)
        add_secret(userinfo.partition(":")[2])


def redact(text: str) -> str:
    """`text` without URL userinfo, registered secrets and the secret variables' values."""
    text = _USERINFO.sub(lambda m: m.group(1) + HIDDEN + "@", str(text))
    secrets = _secrets | {os.environ.get(name, "") for name in SECRET_VARIABLES}
    for secret in sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, HIDDEN)
    return text
