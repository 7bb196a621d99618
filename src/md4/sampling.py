"""Reverse-process samplers for MD4 (paper Sec. 3 and Alg. 2; method file Sec. 6).

For s < t and a masked position with mu = softmax(denoiser(z_t, t)):

    p(z_s = k) = (alpha_s - alpha_t) / (1 - alpha_t) * mu[k]   (k < V)
    p(z_s = m) = (1 - alpha_s) / (1 - alpha_t)

Unmasked positions never change. Three grid step rules share that structure:
``ancestral`` (one draw over V + 1 outcomes), ``top_p`` (ancestral on the
nucleus of mu) and ``mean`` (draw x0 ~ mu, then unmask with the step's
probability; paper App. G). Time grids are ``uniform`` or ``cosine``. ``exact``
draws each next unmasking time directly (first-hitting sampling, method Sec. 6),
so it makes one network call per token and no discretisation error.

Categorical draws are exact in float64 by default (inverse CDF). The opt-in
``precision="float32-gumbel"`` uses float32 Gumbel-max like the JAX release,
which can never pick tokens below ~1e-8 probability and so acts as an implicit
top-p (paper Sec. 6).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .diffusion import check_tokens
from .schedules import MaskingSchedule, get_schedule

GRIDS = ("uniform", "cosine")
PRECISIONS = ("float64", "float32-gumbel")


@dataclass
class SampleOutput:
    """Samples with no mask id left, and the number of denoiser calls (NFE) made."""

    tokens: torch.Tensor
    nfe: int


# --------------------------------------------------------------------- grids
def time_grid(num_steps: int, grid: str = "uniform", device=None) -> torch.Tensor:
    """Times t_T = 1 > ... > t_0 = 0 (float64, length num_steps + 1).

    ``cosine`` maps each uniform point u to cos(pi/2 (1 - u)), spending more steps near t = 0.
    """
    if int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps}.")
    u = torch.linspace(1.0, 0.0, int(num_steps) + 1, dtype=torch.float64, device=device)
    if grid == "uniform":
        return u
    if grid == "cosine":
        t = torch.cos(0.5 * math.pi * (1.0 - u))
        t[0], t[-1] = 1.0, 0.0
        return t
    raise ValueError(f"Unknown time grid {grid!r}; valid grids are: {', '.join(GRIDS)}.")


# ---------------------------------------------------------- categorical draws
def categorical(probs: torch.Tensor, generator: torch.Generator | None, precision: str = "float64") -> torch.Tensor:
    """One draw per row of ``probs`` [N, K] (rows need not be normalised)."""
    if precision == "float64":
        cdf = probs.double().cumsum(-1)
        u = torch.rand(cdf.shape[:-1] + (1,), dtype=torch.float64, device=probs.device, generator=generator)
        idx = torch.searchsorted(cdf, u * cdf[..., -1:], right=True).squeeze(-1)
        return idx.clamp_max(probs.shape[-1] - 1)
    if precision == "float32-gumbel":
        tiny = torch.finfo(torch.float32).tiny
        u = torch.rand(probs.shape, dtype=torch.float32, device=probs.device, generator=generator)
        gumbel = -torch.log(-torch.log(u.clamp_min(tiny)))
        return (torch.log(probs.float()) + gumbel).argmax(-1)
    raise ValueError(f"Unknown sampling precision {precision!r}; valid options are: {', '.join(PRECISIONS)}.")


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose mass reaches top_p (always the most likely one); renormalise."""
    sorted_p, order = probs.sort(-1, descending=True)
    before = sorted_p.cumsum(-1) - sorted_p
    sorted_p = torch.where(before < top_p, sorted_p, torch.zeros_like(sorted_p))
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return kept / kept.sum(-1, keepdim=True)


# ---------------------------------------------------------------- step rules
StepRule = Callable[..., torch.Tensor]


def ancestral_step(mu, unmask_prob, mask_id, generator, precision):
    """Draw z_s over V + 1 outcomes: mu * p_unmask for real tokens, 1 - p_unmask for the mask (Alg. 2)."""
    probs = torch.cat([mu * unmask_prob, 1.0 - unmask_prob], dim=-1)
    return categorical(probs, generator, precision)  # index V is the mask id


def mean_step(mu, unmask_prob, mask_id, generator, precision):
    """Draw x0 ~ mu, then unmask it with probability (alpha_s - alpha_t) / (1 - alpha_t) (paper App. G)."""
    x0 = categorical(mu, generator, precision)
    u = torch.rand(unmask_prob.shape, dtype=unmask_prob.dtype, device=mu.device, generator=generator)
    return torch.where(u.squeeze(-1) < unmask_prob.squeeze(-1), x0, torch.full_like(x0, mask_id))


# "top_p" is the ancestral rule applied to the nucleus of mu (release default p = 0.98).
SAMPLERS: dict[str, StepRule] = {"ancestral": ancestral_step, "top_p": ancestral_step, "mean": mean_step}
# "exact" jumps between unmasking events instead of stepping on a grid (see sample_exact).
SAMPLER_NAMES = (*SAMPLERS, "exact")


# -------------------------------------------------------------- conditioning
def prefix_init(prefix: torch.Tensor, shape: tuple[int, ...], mask_id: int) -> torch.Tensor:
    """A starting z_1 of ``shape`` [B, L] whose first tokens are ``prefix`` ([P] or [B, P]), the rest masked."""
    batch, length = shape
    prefix = prefix.long().reshape(-1, prefix.shape[-1]).expand(batch, -1)
    if prefix.shape[1] > length:
        raise ValueError(f"The prefix has {prefix.shape[1]} tokens but samples are only {length} long; shorten it.")
    init = torch.full(shape, mask_id, dtype=torch.long, device=prefix.device)
    init[:, : prefix.shape[1]] = prefix
    return init


def _resolve_generator(generator, seed, device):
    if generator is not None and seed is not None:
        raise ValueError("Pass either generator or seed to the sampler, not both.")
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(int(seed))
    return generator


# ------------------------------------------------------- exact (first hitting)
def inverse_alpha(schedule: MaskingSchedule, target: torch.Tensor, iterations: int = 60) -> torch.Tensor:
    """t with alpha(t) = target, by bisection in float64 (alpha is decreasing on [0, 1])."""
    lo = torch.zeros_like(target, dtype=torch.float64)
    hi = torch.ones_like(target, dtype=torch.float64)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        above = schedule.alpha(mid) > target
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    return 0.5 * (lo + hi)


def next_unmask_time(schedule: MaskingSchedule, t: torch.Tensor, num_masked: torch.Tensor, generator) -> torch.Tensor:
    """When, going back from t, the first of ``num_masked`` masked positions unmasks.

    Each masked position unmasks at an independent time tau with P(tau <= s | tau <= t) = (1 - alpha_s) / (1 - alpha_t),
    so the latest of m of them solves 1 - alpha_s = (1 - alpha_t) u^(1/m), u ~ U(0, 1) (first-hitting sampling).
    """
    u = torch.rand(t.shape, dtype=torch.float64, device=t.device, generator=generator)
    one_minus = (1.0 - schedule.alpha(t)) * u ** (1.0 / num_masked.clamp_min(1).double())
    return torch.minimum(inverse_alpha(schedule, 1.0 - one_minus), t)


@torch.no_grad()
def sample_exact(denoiser, schedule, z: torch.Tensor, mask_id: int, labels, generator, precision) -> SampleOutput:
    """Exact reverse process: jump from one unmasking event to the next, one position per sequence per call.

    Every position unmasks at its own time, so one network call per event suffices and a sequence with
    D masked positions takes exactly D calls, whatever the schedule, and no step-size error is made.
    """
    batch = z.shape[0]
    t = torch.ones(batch, dtype=torch.float64, device=z.device)
    nfe = 0
    while True:
        masked = (z == mask_id).reshape(batch, -1)
        count = masked.sum(1)
        if not bool(count.any()):
            return SampleOutput(tokens=z, nfe=nfe)
        active = count > 0
        t = torch.where(active, next_unmask_time(schedule, t, count, generator), t)
        logits = denoiser(z, t.float()) if labels is None else denoiser(z, t.float(), labels=labels)
        nfe += 1
        logits = logits.double() if precision == "float64" else logits.float()
        probs = F.softmax(logits, dim=-1).reshape(batch, -1, logits.shape[-1])
        # the position that unmasks is uniform among the masked ones
        choice = categorical(masked.double(), generator, "float64")
        token = categorical(probs[torch.arange(batch, device=z.device), choice], generator, precision)
        flat = z.reshape(batch, -1)
        rows = active.nonzero().squeeze(-1)
        flat[rows, choice[rows]] = token[rows]
        z = flat.reshape(z.shape)


# -------------------------------------------------------------------- driver
@torch.no_grad()
def sample(
    denoiser: Callable[..., torch.Tensor],
    schedule: str | MaskingSchedule,
    shape: tuple[int, ...],
    vocab_size: int,
    *,
    num_steps: int = 1000,
    sampler: str = "ancestral",
    grid: str = "uniform",
    top_p: float = 0.98,
    precision: str = "float64",
    init: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    time_independent: bool | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    device: torch.device | str | None = None,
) -> SampleOutput:
    """Run the reverse process from all-mask z_1 (or ``init``) to clean tokens.

    Args:
        denoiser: ``denoiser(z, t[, labels=...]) -> logits [B, *shape, V]``.
        schedule: the masking schedule (object or name) the model was trained with.
        shape: [B, *data_shape] of the samples.
        num_steps: number of reverse steps T on the time grid.
        sampler: ``ancestral`` (release default), ``top_p``, ``mean``, or ``exact`` (first-hitting: one call per
            unmasked token, no discretisation error; ``num_steps`` and ``grid`` are then unused).
        grid: ``uniform`` or ``cosine`` time grid.
        top_p: nucleus mass for ``top_p``.
        precision: ``float64`` (exact draws) or ``float32-gumbel`` (the release's behaviour).
        init: conditioning: tokens [B, *data_shape] that stay fixed, with the mask id V at positions to generate
            (see :func:`prefix_init` for a prefix; any pattern of holes gives infilling).
        labels: class labels passed to the denoiser.
        time_independent: if the denoiser ignores t, reuse its output across steps that unmask nothing
            (no network call). Defaults to ``denoiser.time_independent`` when present.
        generator / seed: the source of randomness (one of them, or neither for the global RNG).

    Returns:
        :class:`SampleOutput` with tokens (no mask id left: positions still masked after the last step take
        argmax mu) and the NFE.
    """
    if sampler not in SAMPLER_NAMES:
        raise ValueError(f"Unknown sampler {sampler!r}; valid samplers are: {', '.join(SAMPLER_NAMES)}.")
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown sampling precision {precision!r}; valid options are: {', '.join(PRECISIONS)}.")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
    schedule = get_schedule(schedule)
    mask_id = int(vocab_size)
    if init is not None:
        check_tokens(init, vocab_size, allow_mask=True, name="init")
        if tuple(init.shape) != tuple(shape):
            raise ValueError(f"init has shape {tuple(init.shape)} but the requested samples have shape {tuple(shape)}.")
        device = init.device
        z = init.clone().long()
    else:
        device = torch.device(device) if device is not None else _module_device(denoiser)
        z = torch.full(tuple(shape), mask_id, dtype=torch.long, device=device)
    if time_independent is None:
        time_independent = bool(getattr(denoiser, "time_independent", False))
    generator = _resolve_generator(generator, seed, device)
    if sampler == "exact":
        return sample_exact(denoiser, schedule, z, mask_id, labels, generator, precision)
    step_rule = SAMPLERS[sampler]
    times = time_grid(num_steps, grid)
    alphas = schedule.alpha(times).tolist()
    times = times.tolist()
    batch = z.shape[0]

    nfe = 0
    cached_probs = None  # mu at the current z, valid while z is unchanged (time-independent denoiser only)

    def probs_at(t: float) -> torch.Tensor:
        nonlocal nfe
        tt = torch.full((batch,), t, dtype=torch.float32, device=device)
        logits = denoiser(z, tt) if labels is None else denoiser(z, tt, labels=labels)
        nfe += 1
        return F.softmax(logits.double() if precision == "float64" else logits.float(), dim=-1)

    for i in range(len(times) - 1):
        masked = z == mask_id
        if not masked.any():
            break
        if cached_probs is None or not time_independent:
            cached_probs = probs_at(times[i])
        unmask_prob = (alphas[i + 1] - alphas[i]) / (1.0 - alphas[i])
        mu = cached_probs[masked]
        if sampler == "top_p":
            mu = nucleus(mu, top_p)
        p = torch.full((mu.shape[0], 1), unmask_prob, dtype=mu.dtype, device=device)
        new = step_rule(mu, p, mask_id, generator, precision)
        if bool((new != mask_id).any()):
            z[masked] = new
            cached_probs = None

    masked = z == mask_id
    if masked.any():  # final decode: argmax mu for any position still masked
        if cached_probs is None or not time_independent:
            cached_probs = probs_at(times[-1])
        z[masked] = cached_probs[masked].argmax(-1)
    return SampleOutput(tokens=z, nfe=nfe)


def _module_device(denoiser) -> torch.device:
    params = getattr(denoiser, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")
