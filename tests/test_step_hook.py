"""The ``on_step`` hook of :func:`md4.sample` (what ``md4 serve`` streams): one call per change of z, each an
unmasking of some masked positions that never changes a given or unmasked token, the last equal to the samples;
for every sampler and model kind, through :func:`md4.generate` and the image helpers too, and an exception raised
in it stops sampling."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from md4 import MD4, Autoregressive, GenMD4, generate, sample
from md4.data import CharTokenizer
from md4.nn.contract import DenoiserCapabilities
from md4.sampling import SAMPLER_NAMES

V, LENGTH = 3, 4


class Bigram(nn.Module):
    """A causal, time-independent denoiser: the logits at a position are the row of a fixed table for its input."""

    capabilities = DenoiserCapabilities(causal=True, time_independent=True)

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(V + 1, V, generator=torch.Generator().manual_seed(0)))

    def forward(self, ids, t, labels=None):
        return self.table[ids]


def recorded(model, init: torch.Tensor, **options) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The states ``on_step`` saw and the tokens :func:`sample` returned, starting from ``init``."""
    seen: list[torch.Tensor] = []
    out = sample(model, init=init, on_step=seen.append, seed=0, **options)
    return seen, out.tokens


def check_steps(seen: list[torch.Tensor], start: torch.Tensor, tokens: torch.Tensor, mask_id: int) -> None:
    """Each state differs from the one before only where that one was masked, and the last is the samples."""
    assert seen and torch.equal(seen[-1], tokens)
    before = start
    for state in seen:
        changed = state != before
        assert changed.any() and (before[changed] == mask_id).all()
        before = state


def with_prefix(rows: int, mask_id: int) -> torch.Tensor:
    init = torch.full((rows, LENGTH), mask_id)
    init[:, 0] = 1
    return init


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
@pytest.mark.parametrize("kind", ["md4", "genmd4"])
def test_every_sampler_calls_on_step_at_each_change_ending_in_the_samples(oracle, sampler, kind):
    model = MD4(oracle, V) if kind == "md4" else GenMD4(oracle, V)
    init = with_prefix(5, V)
    seen, tokens = recorded(model, init, sampler=sampler, steps=12)
    check_steps(seen, init, tokens, V)
    assert (tokens[:, 0] == 1).all()


def test_grid_steps_that_unmask_nothing_are_not_reported(oracle):
    model = MD4(oracle, V)
    init = with_prefix(1, V)
    seen, tokens = recorded(model, init, steps=500)
    assert len(seen) <= LENGTH - 1  # one row: at most one change per position to fill
    check_steps(seen, init, tokens, V)


def test_the_autoregressive_sampler_reports_one_token_per_call():
    model = Autoregressive(Bigram(), V, (LENGTH,))
    init = with_prefix(2, V)
    seen, tokens = recorded(model, init)
    assert len(seen) == LENGTH - 1
    check_steps(seen, init, tokens, V)


def test_generate_and_the_image_helpers_pass_on_step_on(oracle):
    from md4.data import ImageCodec
    from md4.generation.images import fill_image, sample_grid

    model = MD4(oracle, V, data_shape=(LENGTH,))
    model.anchor_parameter = nn.Parameter(torch.zeros(1))
    seen: list[torch.Tensor] = []
    out = generate(model, CharTokenizer("abc"), 2, prompt="a", steps=8, seed=0, on_step=seen.append)
    assert torch.equal(seen[-1], out.tokens) and out.texts[0].startswith("a")

    def pixels(z, t):  # 2 x 2 pixels as the oracle's 4 tokens
        return oracle(z.reshape(len(z), -1), t).reshape(*z.shape, V)

    picture = MD4(pixels, V, data_shape=(2, 2, 1))
    picture.anchor_parameter = nn.Parameter(torch.zeros(1))
    codec = ImageCodec(2, 2, 1, levels=V)
    frames: list[torch.Tensor] = []
    drawn = sample_grid(picture, codec, 3, steps=8, seed=0, on_step=frames.append)
    assert torch.equal(frames[-1], drawn.output.tokens)
    frames.clear()
    given = torch.tensor([[[0], [1]], [[2], [0]]])
    filled = fill_image(picture, codec, given, 2, mask="bottom-half", steps=8, on_step=frames.append)
    assert torch.equal(frames[-1], filled.output.tokens) and (frames[0][:, 0] == given[0]).all()


def test_an_exception_in_on_step_stops_sampling(oracle):
    class Stop(Exception):
        pass

    calls = []

    def stop(z):
        calls.append(z)
        raise Stop

    with pytest.raises(Stop):
        sample(MD4(oracle, V), 2, shape=(LENGTH,), sampler="exact", on_step=stop, seed=0)
    assert len(calls) == 1
