import itertools
import math
import time

import numpy as np
import pytest
import torch

from md4.ngram import NGramModel, sample_entropy


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_probabilities_sum_to_one_for_every_context(order):
    """Seen and unseen contexts of every length up to n - 1 (and longer ones) give a distribution over V."""
    vocab = 4
    train = np.random.default_rng(order).integers(0, 3, 300)  # token 3 never occurs
    model = NGramModel.fit(train, vocab, order)
    for length in range(order + 1):
        contexts = np.array(list(itertools.product(range(vocab), repeat=length)), dtype=np.int64)
        probs = model.next_token_probs(contexts.reshape(vocab**length, length))
        assert np.all(probs > 0) and np.allclose(probs.sum(1), 1.0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("order", [1, 3])
def test_log_prob_is_the_next_token_probability_of_each_prefix(order):
    train = np.random.default_rng(0).integers(0, 5, 2000)
    model = NGramModel.fit(torch.from_numpy(train), 5, order)
    tokens = np.random.default_rng(1).integers(0, 5, (2, 6))
    logp = model.log_prob(tokens)
    for i in range(6):
        probs = model.next_token_probs(tokens[:, :i])
        assert np.allclose(logp[:, i], np.log(probs[np.arange(2), tokens[:, i]]))


def test_a_periodic_sequence_is_almost_certain():
    period = np.tile(np.array([3, 1, 4, 1, 5, 9, 2, 6]), 2000)
    model = NGramModel.fit(period, 10, 4)
    samples = period[: 64 * 128].reshape(64, 128)
    assert math.exp(-model.log_prob(samples)[:, 3:].mean()) == pytest.approx(1.0, abs=1e-3)  # full contexts
    assert model.perplexity(samples) < 1.1  # the first tokens have shorter contexts


def test_uniform_tokens_have_perplexity_v():
    rng = np.random.default_rng(0)
    model = NGramModel.fit(rng.integers(0, 8, 200000), 8, 3)
    assert model.perplexity(rng.integers(0, 8, (64, 128))) == pytest.approx(8.0, rel=0.03)


def test_scoring_64_samples_of_128_characters_is_fast():
    rng = np.random.default_rng(0)
    model = NGramModel.fit(rng.integers(0, 65, 300000), 65, 5)
    samples = rng.integers(0, 65, (64, 128))
    start = time.perf_counter()
    model.perplexity(samples)
    assert time.perf_counter() - start < 1.0


def test_sample_entropy():
    assert sample_entropy(np.full((3, 50), 7)) == 0.0
    assert sample_entropy(np.tile(np.arange(16), (2, 4))) == pytest.approx(4.0)
    mixed = np.stack([np.full(8, 2), np.tile(np.arange(4), 2)])  # 0 bits and 2 bits
    assert sample_entropy(torch.from_numpy(mixed)) == pytest.approx(1.0)
    assert sample_entropy(np.array([[0, 1]])) == pytest.approx(math.log2(2))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: NGramModel.fit(np.arange(5), 5, 0), "order must be a positive integer"),
        (lambda: NGramModel.fit(np.arange(2), 5, 3), "at least 3 training tokens"),
        (lambda: NGramModel.fit(np.arange(5), 4, 2), r"ids in \[0, 4\] but vocab_size is 4"),
        (lambda: NGramModel.fit(np.zeros(10, dtype=int), 50257, 5), "use a lower order"),
        (lambda: NGramModel.fit(np.zeros((2, 5), dtype=int), 5, 2), "1 dimensions"),
        (lambda: NGramModel.fit(np.arange(5), 5, 2).perplexity(np.arange(5)), "2 dimensions"),
        (lambda: sample_entropy(np.zeros((2, 0), dtype=int)), "non-empty"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()
