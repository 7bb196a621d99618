"""MD4 with K noise draws per training sequence (``model.draws``): the K draws in one network call are the K
separately drawn terms averaged, processes that split a batch draw the noise one process would, the loss stays an
unbiased estimate of the NELBO, and its variance falls."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_training import release, tiny_config, tiny_trainer

from md4 import MD4
from md4.config import ConfigError
from md4.core.noise import BatchShard
from md4.nn.transformer import Transformer
from md4.nn.transformer_config import TransformerConfig

V, L = 6, 16


class Counting(torch.nn.Module):
    """A random transformer denoiser that counts its calls."""

    capabilities = Transformer.capabilities

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = Transformer(TransformerConfig(vocab_size=V, dim=32, n_layers=1, n_heads=2, max_positions=L))
        for p in self.net.parameters():  # away from the zero-initialised output layer and modulations
            torch.nn.init.normal_(p, std=0.3)
        self.calls = 0

    def forward(self, z, t, labels=None, select=None):
        self.calls += 1
        return self.net(z, t, labels=labels, select=select)


def data(batch: int = 8) -> torch.Tensor:
    return torch.randint(0, V, (batch, L), generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def test_k_draws_in_one_call_are_the_k_terms_drawn_apart_averaged():
    denoiser = Counting()
    model = MD4(denoiser, V)
    x, t = data(), torch.linspace(0.05, 0.95, 8)
    together = model.continuous_loss(x, t=t, generator=torch.Generator().manual_seed(2), draws=3)
    assert denoiser.calls == 1
    g = torch.Generator().manual_seed(2)
    masks = [model.forward_sample(x, t, g) for _ in range(3)]
    apart = torch.stack([model._masked_log_likelihood(x, z, t, None) for z in masks]).mean(0)
    torch.testing.assert_close(together, model.schedule.weight(t.double()).float() * apart)


@torch.no_grad()
def test_shards_of_a_batch_draw_the_noise_of_the_whole_batch():
    model, x = MD4(Counting(), V), data()
    whole = model.continuous_loss(x, generator=torch.Generator().manual_seed(4), draws=3)
    halves = [
        model.continuous_loss(
            x[rows], generator=torch.Generator().manual_seed(4), shard=BatchShard(rows.start, 8), draws=3
        )
        for rows in (slice(0, 3), slice(3, 8))
    ]
    torch.testing.assert_close(torch.cat(halves), whole)


@torch.no_grad()
def test_the_k_draw_loss_is_unbiased_with_lower_variance():
    x = data()
    losses = {}
    for draws in (1, 4):
        model = MD4(Counting(), V, draws=draws)
        g = torch.Generator().manual_seed(3)
        losses[draws] = torch.stack([model.loss(x, generator=g)[0] for _ in range(300)]).double()
    one, four = losses[1], losses[4]
    stderr = math.sqrt(one.var() / len(one) + four.var() / len(four))
    assert abs(one.mean() - four.mean()) < 4 * stderr
    assert four.var() < 0.6 * one.var()


def test_the_key_trains_and_bad_values_are_one_sentence(tmp_path):
    trainer = tiny_trainer(tmp_path / "run", "model.draws=2", "train.steps=2")
    try:
        assert trainer.model.draws == 2
        trainer.fit()
        assert trainer.step == 2
    finally:
        release(trainer)
    for bad in ("0", "1.5", "true"):
        with pytest.raises((ConfigError, ValueError), match="draws"):
            tiny_config(f"model.draws={bad}")
    with pytest.raises((ConfigError, ValueError), match="draws"):
        tiny_config("model.kind=genmd4", "model.draws=2")
