"""Checkpoints: a training process killed with SIGKILL at a random step, started again,
ends with the very weights of a run that was never interrupted."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from finetuner.training import checkpoints

SCRIPT = """
import sys, time
from safetensors.torch import save_file
from finetuner.data import pairs as data
from finetuner.catalogue import lookup
from finetuner.models import TextModel
from finetuner.training.loop import TrainConfig, train

weights, pairs_csv, checkpoint_dir, out = sys.argv[1:5]
spec = lookup("minilm-l6-en", max_length=16).model_copy(update={"weights": weights})
model = TextModel.pretrained(spec)
# The callbacks' state is in the checkpoints too: the best epoch's weights ("min" of a
# rising metric keeps an early epoch) and early stopping's count.
config = TrainConfig(epochs=3, batch_size=8, learning_rate=1e-3, seed=5,
                     checkpoint_dir=checkpoint_dir, checkpoint_every=2, log_every=1000,
                     best_model_metric="ndcg@10", best_model_mode="min",
                     early_stopping_patience=3)
pairs = data.read_pairs(pairs_csv)
# Slow steps, so that the test can kill the process in the middle of training.
result = train(model, pairs, config, on_step=lambda s: time.sleep(0.15), eval_data=pairs[:16])
save_file({k: v.contiguous() for k, v in model.embedder.state_dict().items()}, out)
print("steps", result["steps"], "best epoch", result["best_epoch"], "history", result["history"])
"""


@pytest.fixture
def trainer(tmp_path, tiny_bert, pairs_csv):
    weights = tiny_bert(tmp_path / "bert")
    csv = pairs_csv(40)
    (tmp_path / "train_script.py").write_text(SCRIPT)

    def start(checkpoint_dir: str, out: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(tmp_path / "train_script.py"), str(weights), str(csv),
             checkpoint_dir, out],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    return start


def finish(process: subprocess.Popen) -> str:
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    return stdout + stderr


def same_weights(a: str, b: str) -> bool:
    first, second = load_file(a), load_file(b)
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_killed_and_restarted_training_ends_bit_identical(trainer, tmp_path):
    reference = finish(trainer("", str(tmp_path / "reference.safetensors")))  # uninterrupted

    folder = str(tmp_path / "checkpoints")
    process = trainer(folder, str(tmp_path / "resumed.safetensors"))
    kill_after = random.Random().choice([2, 4, 6, 8])  # a random checkpoint, then a bit more
    deadline = time.monotonic() + 120
    while not any(s >= kill_after for s in checkpoints.complete_steps(folder)):
        assert process.poll() is None and time.monotonic() < deadline, "finished too soon"
        time.sleep(0.02)
    time.sleep(random.Random().uniform(0, 0.3))
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL

    # A later checkpoint torn by the kill (no marker) is ignored.
    torn = tmp_path / "checkpoints" / "step-000000999"
    torn.mkdir()
    (torn / "state.pt").write_bytes(b"half a checkpoint")

    log = finish(trainer(folder, str(tmp_path / "resumed.safetensors")))
    assert "resuming from the checkpoint at step" in log
    assert "step 999" not in log
    summary = reference[reference.index("steps ") :].splitlines()[0]
    assert "best epoch 1" in summary and summary in log  # same best epoch, same history
    assert same_weights(str(tmp_path / "reference.safetensors"),
                        str(tmp_path / "resumed.safetensors"))  # fmt: skip


def test_an_unreadable_newest_checkpoint_falls_back_to_the_one_before(tmp_path):
    folder = str(tmp_path / "c")
    checkpoints.save(folder, 1, {"position": {"step": 1}})
    checkpoints.save(folder, 2, {"position": {"step": 2}})
    checkpoints.save(folder, 3, {"position": {"step": 3}})
    assert checkpoints.complete_steps(folder) == [2, 3]  # only the newest two are kept
    (tmp_path / "c" / "step-000000003" / "state.pt").write_bytes(b"damaged")
    assert checkpoints.latest(folder)["position"]["step"] == 2
    checkpoints.clear(folder)
    assert checkpoints.latest(folder) is None


def test_checkpoints_on_s3(s3):
    folder = f"s3://{s3}/run/checkpoints"
    state = {"position": {"step": 7}, "rng": checkpoints.rng_states()}
    checkpoints.save(folder, 7, state)
    loaded = checkpoints.latest(folder)
    assert loaded["position"] == {"step": 7}
    assert torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])
    checkpoints.clear(folder)
    assert checkpoints.complete_steps(folder) == []
