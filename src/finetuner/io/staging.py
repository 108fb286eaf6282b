"""Staging folders in the temp dir, named `finetuner-<purpose>-pid<PID>-<random>`.

A process killed with SIGKILL runs no cleanup, and an export's staging folder holds a whole
model (hundreds of MB). The owner's pid in the name lets the next process that stages
recognise such a folder, whose owner is gone, and remove it."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_STAGING = re.compile(r"finetuner-[a-z0-9-]+?-pid(\d+)-[^-]+")


@contextmanager
def stage_dir(purpose: str) -> Iterator[Path]:
    """A fresh staging folder, removed on exit; stale ones of dead processes go first."""
    clean_stale()
    folder = tempfile.mkdtemp(prefix=f"finetuner-{purpose}-pid{os.getpid()}-")
    try:
        yield Path(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def clean_stale(root: str | os.PathLike | None = None) -> list[Path]:
    """Remove this user's staging folders under `root` (the temp dir) whose process is
    gone; the folders removed."""
    removed = []
    try:
        entries = list(os.scandir(root or tempfile.gettempdir()))
    except OSError:
        return removed
    for entry in entries:
        match = _STAGING.fullmatch(entry.name)
        try:
            mine = entry.is_dir(follow_symlinks=False) and entry.stat().st_uid == os.getuid()
        except OSError:  # removed meanwhile, e.g. by another process cleaning up
            continue
        if match and mine and not _alive(int(match.group(1))):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
