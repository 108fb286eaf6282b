"""Pooler: (batch, tokens, dim) token embeddings + attention mask -> (batch, dim)."""

import pytest
import torch

from finetuner.models.poolers import Pooler

BATCH, TOKENS, DIM = 4, 7, 16
LENGTHS = (7, 3, 1, 5)  # valid tokens per row; the rest is padding


def padded_batch(seed=0, low=-2.0, high=2.0, pad_value=None, dtype=torch.float32):
    """Random tokens in [low, high) and a right-padded mask of LENGTHS."""
    gen = torch.Generator().manual_seed(seed)
    tokens = low + (high - low) * torch.rand(BATCH, TOKENS, DIM, generator=gen, dtype=dtype)
    mask = torch.zeros(BATCH, TOKENS, dtype=torch.long)
    for row, length in enumerate(LENGTHS):
        mask[row, :length] = 1
        if pad_value is not None:
            tokens[row, length:] = pad_value
    return tokens, mask


def valid(tokens, row):
    return tokens[row, : LENGTHS[row]]


def test_mean_ignores_padding():
    tokens, mask = padded_batch(pad_value=1000.0)
    out = Pooler("mean")(tokens, mask)
    assert out.shape == (BATCH, DIM)
    for row in range(BATCH):
        torch.testing.assert_close(out[row], valid(tokens, row).mean(dim=0))


def test_mean_is_default_mode():
    tokens, mask = padded_batch()
    torch.testing.assert_close(Pooler()(tokens, mask), Pooler("mean")(tokens, mask))


def test_cls_takes_first_token():
    tokens, mask = padded_batch()
    out = Pooler("cls")(tokens, mask)
    assert torch.equal(out, tokens[:, 0])


def test_max_ignores_larger_padding():
    tokens, mask = padded_batch(pad_value=1000.0)
    out = Pooler("max")(tokens, mask)
    assert out.shape == (BATCH, DIM)
    for row in range(BATCH):
        assert torch.equal(out[row], valid(tokens, row).amax(dim=0))
    assert out.max() < 2


def test_max_of_all_negative_tokens():
    # Padding is zero and larger than every real value: it must still be ignored.
    tokens, mask = padded_batch(low=-5.0, high=-1.0, pad_value=0.0)
    out = Pooler("max")(tokens, mask)
    for row in range(BATCH):
        assert torch.equal(out[row], valid(tokens, row).amax(dim=0))
    assert (out < -1).all()


def test_gem_p1_is_mean_pooling():
    tokens, mask = padded_batch(seed=1, pad_value=-50.0)
    assert (tokens < 0).any() and (tokens > 0).any()
    gem = Pooler("GeM", p=1.0)(tokens, mask)
    mean = Pooler("mean")(tokens, mask)
    assert torch.allclose(gem, mean, atol=1e-5)


def test_gem_p3_is_generalised_mean_on_positive_inputs():
    tokens, mask = padded_batch(seed=2, low=0.1, high=3.0, pad_value=100.0, dtype=torch.float64)
    out = Pooler("GeM", p=3.0)(tokens.clone(), mask)
    for row in range(BATCH):
        expected = valid(tokens, row).pow(3).mean(dim=0).pow(1 / 3)
        # p is a float32 buffer, so 1/p is exact to about 1e-8 only.
        torch.testing.assert_close(out[row], expected, rtol=1e-6, atol=0)
    # It lies between the mean and the max, strictly when the tokens differ.
    mean, top = Pooler("mean")(tokens, mask), Pooler("max")(tokens, mask)
    assert (out[0] > mean[0]).all() and (out[0] < top[0]).all()


def test_gem_keeps_sign():
    # All-negative tokens give the negated GeM of their absolute values.
    tokens, mask = padded_batch(seed=3, low=0.5, high=2.0, pad_value=0.0)
    pooler = Pooler("GeM", p=3.0)
    torch.testing.assert_close(pooler(-tokens, mask), -pooler(tokens, mask))


def test_gem_large_p_approaches_max():
    tokens, mask = padded_batch(seed=4, low=1.0, high=3.0, pad_value=5.0)
    out = Pooler("GeM", p=50.0)(tokens, mask)
    top = Pooler("max")(tokens, mask)
    for row in range(BATCH):
        # (sum x^p / n)^(1/p) lies in [max * n^(-1/p), max].
        n = LENGTHS[row]
        assert (out[row] <= top[row] * (1 + 1e-5)).all()
        assert (out[row] >= top[row] * n ** (-1 / 50) * (1 - 1e-5)).all()
    torch.testing.assert_close(out, top, rtol=0.05, atol=0)
    # The single-token row is exactly its token.
    torch.testing.assert_close(out[2], tokens[2, 0])


def test_gem_p_is_a_saved_buffer_not_a_parameter():
    pooler = Pooler("GeM", p=4.5)
    state = pooler.state_dict()
    assert set(state) == {"p"}
    assert state["p"].item() == 4.5
    assert list(pooler.parameters()) == []
    # Loading a saved p changes the pooling.
    tokens, mask = padded_batch(seed=5, low=0.1, high=2.0)
    other = Pooler("GeM", p=1.0)
    other.load_state_dict(state)
    torch.testing.assert_close(other(tokens, mask), pooler(tokens, mask))
    assert "p=4.5" in repr(pooler)


def test_invalid_mode_raises():
    with pytest.raises(ValueError, match="unknown pooler 'gem'"):
        Pooler("gem")


def test_gem_small_values_are_not_floored():
    # The generalised mean of a constant is that constant, however small.
    tokens = torch.full((1, 4, 3), 0.001)
    mask = torch.ones(1, 4)
    torch.testing.assert_close(Pooler("GeM", p=3.0)(tokens, mask), tokens[:, 0], rtol=1e-4, atol=0)


def test_gem_large_padding_values_do_not_give_nan():
    tokens, mask = padded_batch(seed=6, low=1.0, high=3.0, pad_value=10.0)
    out = Pooler("GeM", p=50.0)(tokens, mask)
    assert torch.isfinite(out).all()
