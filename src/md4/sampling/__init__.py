"""Reverse-process samplers for masked diffusion (paper Sec. 3 and Alg. 2).

For s < t and a masked position with mu = softmax(denoiser(z_t, t)):

    p(z_s = v) = mu[v] (alpha_v(s) - alpha_v(t)) / (1 - alpha_v(t))          (v < V)
    p(z_s = m) = sum_v mu[v] (1 - alpha_v(s)) / (1 - alpha_v(t))

With a schedule shared by every token (MD4) alpha_v = alpha and the mask keeps (1 - alpha_s) / (1 - alpha_t);
a per-token schedule (GenMD4, the paper's state-dependent schedule) gives each value its own alpha_v.
Unmasked positions never change. Each sampler name maps to one complete sampler in :data:`SAMPLERS`:

- ``ancestral``: one draw over the V + 1 outcomes per masked position on a time grid (the release's default);
- ``top_p``: the ancestral step on the nucleus of mu (release default p = 0.98);
- ``mean``: draw x0 ~ mu, then unmask it with the step's probability (paper App. G);
- ``exact``: first-hitting sampling: draw each next unmasking time directly (one network call per token for
  MD4; thinning for a per-token schedule's rates, GenMD4's), with no discretisation error;
- ``confident``: not the reverse process but MaskGIT's parallel decoding (Chang et al. 2022): each of ``steps``
  calls unmasks the masked positions where mu is most confident (approximate).

An autoregressive model (``model.kind = "ar"``) has no reverse process: it declares the one sampler
``autoregressive`` (:mod:`md4.sampling.autoregressive`, left to right with temperature and top-p, one network pass
per token with a KV cache), which :func:`sample` runs for it; it is not in :data:`SAMPLERS`, whose entries all run
the masked reverse process.

Time grids are ``uniform`` or ``cosine``. Categorical draws are exact in float64 by default (inverse CDF);
``categorical="float32-gumbel"`` uses float32 Gumbel-max like the JAX release, which can never pick tokens
below ~1e-8 probability and so acts as an implicit top-p (paper Sec. 6). mu itself is float32: the float64
inverse CDF cannot resolve probabilities below ~1e-16 of a row's mass, float32 holds them down to ~1e-38, and
its relative rounding (6e-8) is that of the float32 logits it comes from; only the cumulative sum, which would
swallow small probabilities in float32, and the step probabilities, where a_s - a_t cancels, need float64.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from md4.core.ar import AUTOREGRESSIVE, Autoregressive
from md4.core.kind_contract import ModelKindContract
from md4.core.tokens import check_tokens
from md4.sampling.autoregressive import left_to_right
from md4.sampling.confident import ConfidentSampler
from md4.sampling.draws import categorical, nucleus, prefix_init, time_grid
from md4.sampling.exact import ExactSampler, next_unmask_time
from md4.sampling.grid import GridSampler, Sampler, ancestral_step, mean_step
from md4.sampling.network import Diffusion, Network, StepObserver, Trajectory
from md4.sampling.options import (
    CATEGORICAL,
    DEFAULT_CATEGORICAL,
    DEFAULT_GRID,
    DEFAULT_GUIDANCE,
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    DEFAULT_TOP_P,
    GRIDS,
    MAX_GUIDANCE,
    SampleOutput,
    SamplingOptions,
)
from md4.sampling.settings import SampleSettings

SAMPLERS: dict[str, Sampler] = {
    "ancestral": GridSampler(ancestral_step, "one draw over V + 1 outcomes per step (Alg. 2)"),
    "top_p": GridSampler(
        ancestral_step, "ancestral on the nucleus of mu (--top-p)", truncate=lambda mu, o: nucleus(mu, o.top_p)
    ),
    "mean": GridSampler(mean_step, "draw x0 ~ mu, then unmask with the step's probability (App. G)"),
    "exact": ExactSampler(),
    "confident": ConfidentSampler(),
}
SAMPLER_NAMES = tuple(SAMPLERS)
EVERY_SAMPLER = (*SAMPLER_NAMES, AUTOREGRESSIVE)  # the names a run's [sample] table may give


def default_sampler(model) -> str:
    """The sampler :func:`sample` uses when none is named: the first a model kind declares, else ``ancestral``."""
    if isinstance(model, ModelKindContract) and model.samplers is not None:
        return model.samplers[0]
    return DEFAULT_SAMPLER


def get_sampler(name: str) -> Sampler:
    if name not in SAMPLERS:
        raise ValueError(f"Unknown sampler {name!r}; valid samplers are: {', '.join(SAMPLER_NAMES)}.")
    return SAMPLERS[name]


# -------------------------------------------------------------------- driver
def _resolve_generator(generator, seed, device):
    if generator is not None and seed is not None:
        raise ValueError("Pass either generator or seed to the sampler, not both.")
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(int(seed))
    return generator


def _model_device(model: Diffusion) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    return torch.device("cpu")


@torch.no_grad()
def sample(
    model: Diffusion,
    num_samples: int | None = None,
    *,
    shape: tuple[int, ...] | None = None,
    steps: int = DEFAULT_STEPS,
    sampler: str | None = None,
    grid: str = DEFAULT_GRID,
    top_p: float | None = None,
    categorical: str = DEFAULT_CATEGORICAL,
    temperature: float = 1.0,
    init: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    guidance: float = DEFAULT_GUIDANCE,
    snapshots: int = 0,
    on_step: Callable[[torch.Tensor], None] | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    device: torch.device | str | None = None,
) -> SampleOutput:
    """Run the reverse process of ``model`` from all-mask z_1 (or ``init``) to clean tokens.

    Args:
        model: an :class:`md4.MD4`, :class:`md4.GenMD4` or any :class:`Diffusion` (its denoiser, schedule and
            vocabulary are used as trained); a model kind (:class:`ModelKindContract`) refuses a sampler that
            does not apply to it.
        num_samples: how many samples; with ``shape`` (default ``model.data_shape``) it gives z_1's shape.
        steps: reverse steps T on the time grid (unused by ``exact``); network calls for ``confident``.
        sampler: a name in :data:`SAMPLERS`: ``ancestral``, ``top_p``, ``mean``, ``exact`` or ``confident``; or
            ``autoregressive`` for an ar model (:func:`default_sampler` when None: ar models' is autoregressive).
        grid: ``uniform`` or ``cosine`` time grid.
        top_p: nucleus mass for ``top_p`` (None: 0.98) and ``autoregressive`` (None: 1, the whole distribution).
        categorical: ``float64`` (exact draws) or ``float32-gumbel`` (the release's truncating draws).
        temperature: ``autoregressive`` only: draw from softmax(logits / temperature); 0 takes the argmax.
        init: conditioning: tokens [B, *data_shape] that stay fixed, with the mask id V at positions to generate
            (see :func:`prefix_init` for a prefix; any pattern of holes gives infilling). Replaces num_samples.
        labels: class labels [B] for a class-conditional model.
        guidance: classifier-free guidance weight: 1 conditions on the labels, 0 ignores them, > 1 follows them
            more closely (needs a model trained with label dropout).
        snapshots: keep this many states of the reverse process, from all-mask to the samples (for a picture).
        on_step: called with a copy of z after each step that changes it (mask id V where still masked), so the
            last call's z equals the returned tokens; for every sampler (a live view: ``md4 serve``). An
            exception it raises stops sampling and propagates (a way to cancel).
        generator / seed: the source of randomness (one of them, or neither for the global RNG).

    Returns:
        :class:`SampleOutput` with tokens (no mask id left) and the number of network calls (NFE).
    """
    sampler = sampler or default_sampler(model)
    if isinstance(model, ModelKindContract):
        model.check_sampler(sampler)
    in_order = sampler == AUTOREGRESSIVE
    if top_p is None:
        top_p = 1.0 if in_order else DEFAULT_TOP_P
    options = SamplingOptions(steps=steps, grid=grid, top_p=top_p, categorical=categorical, temperature=temperature)
    _check_in_order(model, in_order, temperature, guidance)
    chosen = None if in_order else get_sampler(sampler)
    mask_id = int(model.vocab_size)
    z = _start(model, num_samples, shape or model.data_shape, init, device)
    if labels is not None:
        _check_labels(labels, model.num_classes, z.shape[0])
    generator = _resolve_generator(generator, seed, z.device)
    trajectory = Trajectory(snapshots, mask_id)
    observe = trajectory if on_step is None else StepObserver(trajectory, on_step)
    if in_order:
        tokens, nfe = left_to_right(model, z, options, generator, observe)
        return SampleOutput(tokens=tokens, nfe=nfe, trajectory=trajectory.states)
    net = Network(model, labels, guidance)
    tokens = chosen.run(net, model.schedule, z, mask_id, options, generator, observe)
    return SampleOutput(tokens=tokens, nfe=net.nfe, trajectory=trajectory.states)


def _start(model: Diffusion, num_samples: int | None, shape, init: torch.Tensor | None, device) -> torch.Tensor:
    """z_1: a copy of ``init`` (checked), or ``num_samples`` all-mask examples of ``shape``."""
    if init is not None:
        check_tokens(init, model.vocab_size, allow_mask=True, name="init")
        if num_samples is not None and tuple(init.shape) != (num_samples, *(shape or init.shape[1:])):
            raise ValueError(
                f"init has shape {tuple(init.shape)} but {num_samples} samples of shape {shape} were asked for; "
                "pass init alone."
            )
        return init.clone().long()
    if num_samples is None or shape is None:
        raise ValueError("Pass num_samples (and shape, unless the model has a data_shape), or init.")
    if int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples}.")
    device = torch.device(device) if device is not None else _model_device(model)
    return torch.full((int(num_samples), *shape), int(model.vocab_size), dtype=torch.long, device=device)


def _check_labels(labels: torch.Tensor, classes: int | None, num_samples: int) -> None:
    """Refuse, in one sentence, labels that are not one class id (or the "no label" id) per sample."""
    if classes is None:
        raise ValueError("Labels were given but the model is not class-conditional; leave them out.")
    if labels.shape != (num_samples,) or int(labels.min()) < 0 or int(labels.max()) > classes:
        raise ValueError(
            f"labels must be one class id per sample in 0..{classes - 1} ({classes} means no label), "
            f"got shape {tuple(labels.shape)} and ids {int(labels.min())}..{int(labels.max())}."
        )


def _check_in_order(model, in_order: bool, temperature: float, guidance: float) -> None:
    """Refuse, in one sentence each, the autoregressive sampler for another model, and the options that apply
    to one kind of sampler only."""
    if in_order and not isinstance(model, Autoregressive):
        raise ValueError(
            f"The {AUTOREGRESSIVE} sampler draws from ar models left to right; use one of {', '.join(SAMPLER_NAMES)}."
        )
    if not in_order and temperature != 1.0:
        raise ValueError(f"temperature applies to the {AUTOREGRESSIVE} sampler of ar models only; leave it at 1.")
    if in_order and guidance != DEFAULT_GUIDANCE:
        raise ValueError("Guidance needs a class-conditional model, and an ar model is not one; leave it at 1.")


__all__ = [
    "CATEGORICAL",
    "DEFAULT_CATEGORICAL",
    "DEFAULT_GRID",
    "DEFAULT_GUIDANCE",
    "DEFAULT_SAMPLER",
    "DEFAULT_STEPS",
    "DEFAULT_TOP_P",
    "EVERY_SAMPLER",
    "GRIDS",
    "MAX_GUIDANCE",
    "SAMPLERS",
    "SAMPLER_NAMES",
    "Diffusion",
    "SampleOutput",
    "SampleSettings",
    "Sampler",
    "SamplingOptions",
    "categorical",
    "default_sampler",
    "get_sampler",
    "next_unmask_time",
    "nucleus",
    "prefix_init",
    "sample",
    "time_grid",
]
