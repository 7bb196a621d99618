"""The samplers ask the network for mu only at the positions a step unmasks (``Network.rows``): the same rows as
the full mu, the same samples for a seed, and no more rows than there are tokens to draw."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from md4 import MD4, sample
from md4.nn.contract import DenoiserCapabilities
from md4.nn.transformer import Transformer
from md4.nn.transformer_config import TransformerConfig
from md4.sampling.network import Network

V, L = 5, 12


class RowCounting(nn.Module):
    """A time-conditioned toy denoiser that declares ``select_index`` and records how many rows each call gave."""

    capabilities = DenoiserCapabilities(select=True, select_index=True)

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(V + 1, V, _weight=torch.randn(V + 1, V, generator=torch.Generator().manual_seed(0)))
        self.rows: list[int | None] = []

    def forward(self, z, t, labels=None, select=None):
        logits = self.embed(z).cumsum(1) * (1 + t[:, None, None])
        self.rows.append(None if select is None else len(select))
        return logits if select is None else logits.reshape(-1, V).index_select(0, select)


def plain(denoiser):
    """The same function as ``denoiser`` behind a callable that declares nothing: mu at every position."""
    return lambda z, t, labels=None: denoiser(z, t, labels=labels)


@pytest.mark.parametrize("sampler", ["ancestral", "top_p", "mean", "exact"])
def test_a_sampler_draws_from_the_rows_it_unmasks_alone_and_gives_the_same_samples(sampler):
    counting = RowCounting()
    with torch.no_grad():
        rows = sample(MD4(counting, V), 6, shape=(L,), steps=16, sampler=sampler, top_p=0.8, seed=3)
        full = sample(MD4(plain(counting), V), 6, shape=(L,), steps=16, sampler=sampler, top_p=0.8, seed=3)
    asked = counting.rows[: rows.nfe]
    assert torch.equal(rows.tokens, full.tokens) and rows.nfe == full.nfe
    if sampler == "exact":  # one position of each sequence per call, L calls
        assert asked == [6] * L
    else:  # each position is asked for once, at the step that unmasks it (the last step unmasks all that are left)
        assert None not in asked and sum(asked) == 6 * L


@pytest.mark.parametrize("guidance", [1.0, 2.5])
@pytest.mark.parametrize("declared", ["select_index", "nothing"])
def test_rows_are_those_of_the_whole_mu(guidance, declared):
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=V, dim=32, n_layers=2, n_heads=2, num_classes=3, max_positions=L)
    network = Transformer(config).eval()
    for p in network.parameters():  # away from the zero-initialised output layer and modulations
        nn.init.normal_(p, std=0.2)
    denoiser = network if declared == "select_index" else plain(network)
    model = MD4(denoiser, V, num_classes=3)
    labels = torch.tensor([0, 2, 1])
    z = torch.randint(0, V + 1, (3, L), generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.3, 0.6, 0.9])
    index = (z == V).flatten().nonzero().squeeze(1)
    with torch.no_grad():
        mu = Network(model, labels, guidance)(z, t).reshape(-1, V).index_select(0, index)
        counted = Network(model, labels, guidance)
        rows = counted.rows(z, t, index)
    assert rows.shape == (len(index), V) and counted.nfe == 1
    torch.testing.assert_close(rows, mu, rtol=1e-5, atol=1e-6)
