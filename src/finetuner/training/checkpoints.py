"""Training checkpoints that survive a preempted node: everything the loop needs to go on
exactly where it stopped, in a local folder or under an s3:// prefix.

A checkpoint is `<dir>/step-<step>/state.pt` and then a `COMPLETE` marker, written last: a
checkpoint without its marker (a write torn by a kill) is ignored. The newest complete one
is resumed from; older ones are deleted once a newer one is whole.
"""

from __future__ import annotations

import io
import random
import re

from finetuner.io import storage

STATE = "state.pt"
MARKER = "COMPLETE"
KEEP = 2  # complete checkpoints kept: the newest, and one in case it is unreadable
_STEP = re.compile(r"step-(\d+)/" + MARKER + "$")


def rng_states() -> dict:
    """Every random state a training step draws from, as tensors and plain values (so the
    file loads with torch.load(weights_only=True))."""
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def gather_rng_states(parallel=None) -> list[dict]:
    """Every process's random states, by rank (a list of one outside a data-parallel run):
    each process of a run draws its own (dropout, augmentations), so a checkpoint, written by
    process 0, keeps them all. Every process of the run must call it."""
    states = rng_states()
    if parallel is None:
        return [states]
    import torch.distributed as dist

    everyone = [None] * parallel.world
    dist.all_gather_object(everyone, states)
    return everyone


def own_rng_states(saved, rank: int = 0) -> dict:
    """This process's random states among a checkpoint's (`gather_rng_states`; an older
    checkpoint holds process 0's alone). A run resumed on more processes than wrote the
    checkpoint gives the new ones the states of a process that did (rank modulo their
    number): that run cannot repeat the interrupted one anyway, its batches are shared
    differently."""
    if isinstance(saved, dict):
        return saved
    if rank >= len(saved):
        print(
            f"the checkpoint holds the random states of {len(saved)} processes; process "
            f"{rank} takes those of process {rank % len(saved)}",
            flush=True,
        )
    return saved[rank % len(saved)]


def set_rng_states(states: dict) -> None:
    import numpy as np
    import torch

    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def complete_steps(folder: str) -> list[int]:
    """The steps of the complete checkpoints in `folder`, oldest first."""
    steps = []
    for uri in storage.list_files(folder):
        match = _STEP.search(uri.replace("\\", "/"))
        if match:
            steps.append(int(match.group(1)))
    return sorted(steps)


def _step_uri(folder: str, step: int) -> str:
    return storage.join(folder, f"step-{step:09d}")


def save(folder: str, step: int, state: dict) -> str:
    """Write a checkpoint of `state` at `step`, marker last; drop all but the newest KEEP."""
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    target = _step_uri(folder, step)
    storage.write_bytes(storage.join(target, STATE), buffer.getvalue())
    storage.write_text(storage.join(target, MARKER), f"{step}\n")
    for old in complete_steps(folder)[:-KEEP]:
        storage.delete_prefix(_step_uri(folder, old) + "/")
    return target


def latest(folder: str) -> dict | None:
    """The state of the newest complete checkpoint in `folder`, or None if there is none."""
    import torch

    for step in reversed(complete_steps(folder)):
        data = storage.read_bytes(storage.join(_step_uri(folder, step), STATE))
        try:
            return torch.load(io.BytesIO(data), weights_only=True)
        except Exception as exc:  # torch raises many types for a damaged file
            print(f"checkpoint at step {step} is unreadable ({exc}); trying an older one")
    return None


def clear(folder: str) -> None:
    """Delete every checkpoint, once training has finished and its model is saved."""
    storage.delete_prefix(folder.rstrip("/") + "/")
