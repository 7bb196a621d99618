"""Generative perplexity and sample entropy of a run's samples, per sampler, step count and categorical draw.

Generative perplexity is the perplexity a scorer (:mod:`md4.quality.scorers`) gives a run's samples; MDLM and the
MD4 paper report it under GPT-2 Large. On its own it rewards dull text, so the mean unigram entropy of the samples'
tokens is reported beside it (:func:`md4.ngram.sample_entropy`), as Zheng et al. (2024, "Masked diffusion models
are secretly time-agnostic masked models and exploit inaccurate categorical sampling") advise: they show that
float32 Gumbel-max draws (``float32-gumbel``) truncate the categorical and buy a lower generative perplexity with
a lower entropy, the more so the more steps. A reference row scores real held-out text of the same length the
same way.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from md4.core.ar import AUTOREGRESSIVE
from md4.data import ImageCodec
from md4.generation.text import generate
from md4.ngram import sample_entropy
from md4.quality.scorers import Score, Scorer
from md4.runs.directory import LoadedRun
from md4.sampling import SAMPLERS

STEPLESS = ("exact", AUTOREGRESSIVE)  # samplers whose number of network calls no step count sets


@dataclass(frozen=True)
class Setting:
    """How samples are drawn: a sampler, its steps (None where they do not apply) and its categorical draws."""

    sampler: str
    steps: int | None
    categorical: str


@dataclass(frozen=True)
class Row:
    """One setting's measurement (or, with ``setting`` None, the held-out text's)."""

    setting: Setting | None
    score: Score
    entropy: float
    samples: int
    nfe: float | None = None
    seconds: float | None = None

    def to_dict(self) -> dict:
        drawn = {} if self.setting is None else asdict(self.setting)
        return {
            **drawn,
            "nfe": self.nfe,
            "gen_ppl": self.score.perplexity,
            "nll_per_token": self.score.nll_per_token,
            "nll_per_token_stderr": self.score.nll_per_token_stderr,
            "scored_tokens": self.score.total_tokens,
            "entropy_bits": self.entropy,
            "samples": self.samples,
            "seconds": self.seconds,
        }


def check_text_run(loaded: LoadedRun) -> None:
    """Refuse, in one sentence, a run whose samples are not sequences of tokens."""
    if isinstance(loaded.codec, ImageCodec) or len(loaded.spec.data_shape) != 1:
        raise ValueError(
            f"{loaded.run_dir} is an image run, and generative perplexity measures text samples; use --fid for images."
        )


def settings(samplers: list[str], steps: list[int], categoricals: list[str]) -> list[Setting]:
    """Every combination of the lists, in that nesting order; a sampler without steps appears once per draw."""
    for name in samplers:
        if name not in SAMPLERS and name != AUTOREGRESSIVE:
            raise ValueError(f"Unknown sampler {name!r}; valid samplers are: {', '.join([*SAMPLERS, AUTOREGRESSIVE])}.")
    return [
        Setting(name, None if name in STEPLESS else count, draw)
        for name in samplers
        for draw in categoricals
        for count in ([None] if name in STEPLESS else steps)
    ]


def draw(
    loaded: LoadedRun, setting: Setting, num: int, *, length: int, batch_size: int, seed: int, **sampling
) -> tuple[torch.Tensor, float, float]:
    """``num`` samples [num, length] of ``setting`` in batches (one generator seeded with ``seed`` for them all),
    the mean network calls per batch, and the seconds taken. ``sampling``: more options of :func:`md4.sample`."""
    generator = torch.Generator(next(loaded.model.parameters()).device).manual_seed(seed)
    steps = {} if setting.steps is None else {"steps": setting.steps}
    start, parts, calls = time.perf_counter(), [], []
    for first in range(0, num, batch_size):
        out = generate(
            loaded.model,
            loaded.codec,
            min(batch_size, num - first),
            length=length,
            sampler=setting.sampler,
            categorical=setting.categorical,
            generator=generator,
            **steps,
            **sampling,
        )
        parts.append(out.tokens.cpu())
        calls.append(out.nfe)
    return torch.cat(parts), sum(calls) / len(calls), time.perf_counter() - start


def measure(tokens: torch.Tensor, scorer: Scorer, setting: Setting | None = None, **drawn) -> Row:
    """The scorer's perplexity and the mean unigram entropy of ``tokens`` [N, L]."""
    return Row(setting, scorer.score(tokens), sample_entropy(tokens.numpy()), len(tokens), **drawn)


def sweep(
    loaded: LoadedRun,
    scorer: Scorer,
    chosen: list[Setting],
    num: int,
    *,
    length: int,
    batch_size: int,
    seed: int,
    **sampling,
) -> list[Row]:
    """One row per setting: ``num`` samples drawn and measured."""
    rows = []
    for setting in chosen:
        tokens, nfe, seconds = draw(loaded, setting, num, length=length, batch_size=batch_size, seed=seed, **sampling)
        rows.append(measure(tokens, scorer, setting, nfe=nfe, seconds=seconds))
    return rows
