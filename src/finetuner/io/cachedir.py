"""Where a cache can be written. A step image's caches live under /models, which a cluster
mounts a volume at; under a read-only root filesystem without that volume, they move to the
temp dir (a tmpfs or emptyDir), so a step never fails for want of a cache."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

_told: set[Path] = set()


def writable(path: Path) -> Path:
    """`path`, created if need be; else a folder of the same name under the temp dir."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        if os.access(path, os.W_OK | os.X_OK):
            return path
    except OSError:
        pass
    fallback = Path(tempfile.gettempdir()) / f"finetuner-cache-{os.getuid()}" / path.name
    fallback.mkdir(parents=True, exist_ok=True)
    if path not in _told:
        _told.add(path)
        print(f"note: cache {path} is not writable; using {fallback}", file=sys.stderr)
    return fallback
