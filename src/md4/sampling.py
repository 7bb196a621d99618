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
  MD4; thinning for GenMD4's per-token rates), with no discretisation error;
- ``confident``: not the reverse process but MaskGIT's parallel decoding (Chang et al. 2022): each of ``steps``
  calls unmasks the masked positions where mu is most confident (approximate).

Time grids are ``uniform`` or ``cosine``. Categorical draws are exact in float64 by default (inverse CDF);
``categorical="float32-gumbel"`` uses float32 Gumbel-max like the JAX release, which can never pick tokens
below ~1e-8 probability and so acts as an implicit top-p (paper Sec. 6). mu itself is float32: the float64
inverse CDF cannot resolve probabilities below ~1e-16 of a row's mass, float32 holds them down to ~1e-38, and
its relative rounding (6e-8) is that of the float32 logits it comes from; only the cumulative sum, which would
swallow small probabilities in float32, and the step probabilities, where a_s - a_t cancels, need float64.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import torch
import torch.nn.functional as F

from .tokens import check_tokens

DEFAULT_STEPS = 256  # the one default number of reverse steps (library, CLI and training samples)
GRIDS = ("uniform", "cosine")
CATEGORICAL = ("float64", "float32-gumbel")
NUCLEUS_TOP_K = 64  # nucleus() looks for the nucleus among this many largest probabilities before sorting a row


class Diffusion(Protocol):
    """What a sampler needs of a model (:class:`md4.MD4` is one)."""

    vocab_size: int
    schedule: torch.nn.Module
    data_shape: tuple[int, ...] | None
    time_independent: bool

    def logits(self, z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor: ...


@dataclass
class SampleOutput:
    """Samples with no mask id left, the number of denoiser calls (NFE) made, and, if asked for, snapshots of
    the reverse process from z_1 to the samples (mask ids included)."""

    tokens: torch.Tensor
    nfe: int
    trajectory: list[torch.Tensor] = field(default_factory=list)


@dataclass(frozen=True)
class SamplingOptions:
    """The knobs shared by the samplers; each sampler reads those it uses."""

    steps: int = DEFAULT_STEPS
    grid: str = "uniform"
    top_p: float = 0.98
    categorical: str = "float64"

    def __post_init__(self) -> None:
        if int(self.steps) != self.steps or self.steps < 1:
            raise ValueError(f"steps must be a positive integer, got {self.steps}.")
        if self.grid not in GRIDS:
            raise ValueError(f"Unknown time grid {self.grid!r}; valid grids are: {', '.join(GRIDS)}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.categorical not in CATEGORICAL:
            raise ValueError(
                f"Unknown categorical draw {self.categorical!r}; valid options are: {', '.join(CATEGORICAL)}."
            )


# --------------------------------------------------------------------- grids
def time_grid(num_steps: int, grid: str = "uniform", device=None) -> torch.Tensor:
    """Times t_T = 1 > ... > t_0 = 0 (float64, length num_steps + 1).

    ``cosine`` maps each uniform point u to cos(pi/2 (1 - u)), spending more steps near t = 0.
    """
    SamplingOptions(steps=num_steps, grid=grid)
    u = torch.linspace(1.0, 0.0, int(num_steps) + 1, dtype=torch.float64, device=device)
    if grid == "uniform":
        return u
    t = torch.cos(0.5 * math.pi * (1.0 - u))
    t[0], t[-1] = 1.0, 0.0
    return t


# ---------------------------------------------------------- categorical draws
def categorical(probs: torch.Tensor, generator: torch.Generator | None, method: str = "float64") -> torch.Tensor:
    """One draw per row of ``probs`` [..., K] (rows need not be normalised); ``method`` is one of CATEGORICAL."""
    if method == "float64":
        u = torch.rand(probs.shape[:-1] + (1,), dtype=torch.float64, device=probs.device, generator=generator)
        return _inverse_cdf(probs.cumsum(-1, dtype=torch.float64), u)
    if method == "float32-gumbel":
        tiny = torch.finfo(torch.float32).tiny
        u = torch.rand(probs.shape, dtype=torch.float32, device=probs.device, generator=generator)
        gumbel = -torch.log(-torch.log(u.clamp_min(tiny)))
        return (torch.log(probs.float()) + gumbel).argmax(-1)
    raise ValueError(f"Unknown categorical draw {method!r}; valid options are: {', '.join(CATEGORICAL)}.")


def _inverse_cdf(cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The index where u [..., 1] in [0, 1) falls in the cumulative sums ``cdf`` [..., K] scaled to their total."""
    idx = torch.searchsorted(cdf, u * cdf[..., -1:], right=True).squeeze(-1)
    return idx.clamp_max(cdf.shape[-1] - 1)


def _keep_nucleus(probs: torch.Tensor, top_p: float, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [N, V] with only their nucleus among their k largest values kept, and whether k reached top_p."""
    top, order = probs.topk(k, dim=-1)
    mass = top.cumsum(-1)
    kept = torch.zeros_like(probs).scatter(-1, order, torch.where(mass - top < top_p, top, torch.zeros_like(top)))
    return kept, mass[:, -1] >= top_p


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose mass reaches top_p (always the most likely one); renormalise.

    The nucleus is looked for among the NUCLEUS_TOP_K largest probabilities (torch.topk) and only rows whose
    nucleus is larger are sorted in full: the same result as sorting every row (up to the order of ties).
    """
    flat = probs.reshape(-1, probs.shape[-1])
    k = min(NUCLEUS_TOP_K, flat.shape[-1])
    kept, found = _keep_nucleus(flat, top_p, k)
    if k < flat.shape[-1] and not bool(found.all()):
        rest = (~found).nonzero().squeeze(-1)
        kept[rest] = _keep_nucleus(flat[rest], top_p, flat.shape[-1])[0]
    kept = kept.reshape(probs.shape)
    return kept / kept.sum(-1, keepdim=True)


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


# ------------------------------------------------------------- the network
MAX_GUIDANCE = 1000.0  # the largest classifier-free guidance weight: far beyond any in use; guided logits stay finite


class Network:
    """mu = softmax of the model's logits, counting the calls (NFE).

    A time-independent denoiser (the optimal one is, paper Sec. 3) gives the same mu for the same z at any t,
    so a call with z unchanged since the previous one reuses its output: grid steps that unmask nothing then
    cost no network call.

    Classifier-free guidance mixes the logits with and without the labels, ``l(none) + guidance * (l(labels) -
    l(none))`` ("none" is the model's "no label" id): 1 is plain conditioning, 0 ignores the labels, and more
    than 1 follows them more closely. Both are computed in one call on a doubled batch.
    """

    def __init__(self, model: Diffusion, labels: torch.Tensor | None, guidance: float = 1.0):
        self.model, self.labels, self.guidance = model, labels, float(guidance)
        if not 0.0 <= self.guidance <= MAX_GUIDANCE:  # also NaN
            raise ValueError(f"guidance must be a number from 0 to {MAX_GUIDANCE:g} (1: no guidance), got {guidance}.")
        if self.guidance == 0.0 and labels is None:  # ignoring labels that were never given: the model as it is
            self.guidance = 1.0
        if self.guidance != 1.0:
            if labels is None or getattr(model, "num_classes", None) is None:
                raise ValueError("Guidance needs a class-conditional model and labels; pass labels or guidance=1.")
            self.unlabelled = torch.full_like(labels, model.num_classes)
            if self.guidance == 0.0:  # exactly the unconditional model
                self.labels, self.guidance = self.unlabelled, 1.0
        self.reuse = bool(model.time_independent)
        self.nfe = 0
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    def _logits(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.guidance == 1.0:
            return self.model.logits(z, t, self.labels)
        both = self.model.logits(torch.cat([z, z]), torch.cat([t, t]), torch.cat([self.labels, self.unlabelled]))
        labelled, unlabelled = both.float().chunk(2)
        return unlabelled + self.guidance * (labelled - unlabelled)

    def __call__(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.reuse and self._last is not None and torch.equal(self._last[0], z):
            return self._last[1]
        logits = self._logits(z, t.float())
        self.nfe += 1
        probs = F.softmax(logits.float(), dim=-1)
        if self.reuse:
            self._last = (z.clone(), probs)
        return probs


class Trajectory:
    """Snapshots of z_t on the way to the sample: whenever the unmasked fraction passes k / (n - 1)."""

    def __init__(self, count: int, mask_id: int):
        self.count, self.mask_id = count, mask_id
        self.states: list[torch.Tensor] = []

    def __call__(self, z: torch.Tensor) -> None:
        if self.count < 2:
            return
        done = float((z != self.mask_id).double().mean())
        while len(self.states) < self.count and done >= len(self.states) / (self.count - 1) - 1e-12:
            self.states.append(z.clone())


# ---------------------------------------------------------------- step rules
StepRule = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, torch.Generator | None, str], torch.Tensor]


def ancestral_step(mu, alpha_s, alpha_t, mask_id, generator, method):
    """Draw z_s over V + 1 outcomes (Alg. 2): mu_v (a_s - a_t)/(1 - a_t) per value, the rest stays masked.

    ``alpha_s``/``alpha_t`` are float64 scalars (a shared schedule) or [V] (a per-token one); index V is the mask id.
    """
    unmask = (alpha_s - alpha_t) / (1.0 - alpha_t)  # in float64: a_s - a_t cancels near t = 0
    stay = (mu * ((1.0 - alpha_s) / (1.0 - alpha_t)).to(mu.dtype)).sum(-1, keepdim=True)
    return categorical(torch.cat([mu * unmask.to(mu.dtype), stay], dim=-1), generator, method)


def mean_step(mu, alpha_s, alpha_t, mask_id, generator, method):
    """Draw x0 ~ mu, then unmask it with probability (a_s - a_t) / (1 - a_t) of its value (paper App. G)."""
    x0 = categorical(mu, generator, method)
    unmask = (alpha_s - alpha_t) / (1.0 - alpha_t)
    if unmask.dim():  # a per-token schedule: the drawn value's own probability
        unmask = unmask[x0]
    u = torch.rand(x0.shape, dtype=unmask.dtype, device=mu.device, generator=generator)
    return torch.where(u < unmask, x0, torch.full_like(x0, mask_id))


# ------------------------------------------------------------------ samplers
class Sampler(ABC):
    """A whole sampler: from z_1 (mask ids at the positions to generate) to clean tokens."""

    description: str
    uses_grid: bool = True  # whether ``steps`` and ``grid`` matter

    def check(self, schedule) -> None:
        """Raise ValueError when this sampler cannot run with ``schedule``."""

    @abstractmethod
    def run(
        self, net: Network, schedule, z: torch.Tensor, mask_id: int, options: SamplingOptions, generator, observe
    ) -> torch.Tensor:
        """The final tokens (no mask id left); ``net`` counts the network calls; ``observe(z)`` sees every state."""


class GridSampler(Sampler):
    """Steps t_i -> t_{i-1} on a time grid with one step rule; positions still masked at t = 0 take argmax mu.

    With a shared schedule (MD4) and float64 draws the three step rules are one transition: a masked position
    unmasks with probability (a_s - a_t) / (1 - a_t) whatever mu, to a draw from mu (its nucleus for top_p). So
    the unmasking positions are drawn first and only their rows of mu are truncated and drawn from: O(unmasking
    x V) work per step rather than O(masked x V), for one wait on the device (gathering those rows); and a step
    that unmasks nothing calls no network at all, time-conditioned or not, so the NFE is the number of steps
    that change z (at most the number of masked positions, as the exact sampler's). Otherwise
    (a per-token schedule, or the release's float32 Gumbel draw over V + 1 outcomes) the step rule is drawn at
    every position and kept at the masked ones. Both stop once nothing is masked.
    """

    def __init__(
        self,
        step: StepRule,
        description: str,
        truncate: Callable[[torch.Tensor, SamplingOptions], torch.Tensor] | None = None,
    ):
        self.step, self.description, self.truncate = step, description, truncate

    def run(self, net, schedule, z, mask_id, options, generator, observe):
        times = time_grid(options.steps, options.grid, device=z.device)
        alphas = schedule.alpha(times)  # [T + 1] or [T + 1, V], float64
        step = self._unmask_some if not schedule.per_token and options.categorical == "float64" else self._everywhere
        batch = z.shape[0]
        observe(z)
        left = int((z == mask_id).sum())
        for i in range(options.steps):
            if not left:
                return z
            mu = partial(net, z, times[i].expand(batch))  # called only if the step needs it
            z, unmasked = step(mu, z, alphas[i + 1], alphas[i], mask_id, options, generator)
            left -= unmasked
            observe(z)
        if left:
            z = torch.where(z == mask_id, net(z, times[-1].expand(batch)).argmax(-1), z)
            observe(z)
        return z

    def _truncated(self, mu: torch.Tensor, options: SamplingOptions) -> torch.Tensor:
        return mu if self.truncate is None else self.truncate(mu, options)

    def _everywhere(self, mu, z, alpha_s, alpha_t, mask_id, options, generator) -> tuple[torch.Tensor, int]:
        """The step rule drawn at every position and kept at the masked ones; z and how many were unmasked."""
        step = self.step(self._truncated(mu(), options), alpha_s, alpha_t, mask_id, generator, options.categorical)
        unmasked = (z == mask_id) & (step != mask_id)
        return torch.where(unmasked, step, z), int(unmasked.sum())

    def _unmask_some(self, mu, z, alpha_s, alpha_t, mask_id, options, generator) -> tuple[torch.Tensor, int]:
        """A shared-schedule step: the unmasking positions first, then (only if there are any) the network and their
        tokens; z and how many there were."""
        u = torch.rand(z.shape, dtype=torch.float64, device=z.device, generator=generator)
        chosen = ((z == mask_id) & (u < (alpha_s - alpha_t) / (1.0 - alpha_t))).nonzero(as_tuple=True)
        if not len(chosen[0]):
            return z, 0
        tokens = categorical(self._truncated(mu()[chosen], options), generator, "float64")
        return z.index_put(chosen, tokens), len(tokens)


def inverse_alpha(schedule, target: torch.Tensor, iterations: int = 60) -> torch.Tensor:
    """t with alpha(t) = target, by bisection in float64 (alpha is decreasing on [0, 1])."""
    lo = torch.zeros_like(target, dtype=torch.float64)
    hi = torch.ones_like(target, dtype=torch.float64)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        above = schedule.alpha(mid) > target
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    return 0.5 * (lo + hi)


def next_unmask_time(schedule, t: torch.Tensor, num_masked: torch.Tensor, generator) -> torch.Tensor:
    """When, going back from t, the first of ``num_masked`` masked positions unmasks.

    Each masked position unmasks at an independent time tau with P(tau <= s | tau <= t) = (1 - alpha_s) / (1 - alpha_t),
    so the latest of m of them solves 1 - alpha_s = (1 - alpha_t) u^(1/m), u ~ U(0, 1) (first-hitting sampling).
    """
    u = torch.rand(t.shape, dtype=torch.float64, device=t.device, generator=generator)
    one_minus = (1.0 - schedule.alpha(t)) * u ** (1.0 / num_masked.clamp_min(1).double())
    return torch.minimum(inverse_alpha(schedule, 1.0 - one_minus), t)


class ExactSampler(Sampler):
    """Jump from one unmasking event to the next: no time grid and no discretisation error.

    Shared schedule (MD4): every position unmasks at its own time whatever its value, so the next event time
    is drawn directly and a sequence with D masked positions takes exactly D network calls.

    Per-token polynomial schedule (GenMD4): going back in time a masked position unmasks to v at rate
    mu[v] w_v / t, so its rate depends on mu. Events are drawn by thinning: candidate times at the bounding rate
    (number masked) * max(w) / t, each accepted with probability sum_n sum_v mu_n[v] w_v / (number masked *
    max(w)) with mu evaluated at the candidate time; the position is then drawn with probability proportional
    to sum_v mu_n[v] w_v and the value proportional to mu_n[v] w_v. This simulates the continuous-time reverse
    process exactly, also for a time-dependent network; a rejected candidate costs a network call unless the
    network ignores t. Other per-token schedules are not supported.
    """

    description = "first-hitting: no time grid, no discretisation error (MD4: one network call per token)"
    uses_grid = False

    def check(self, schedule) -> None:
        if schedule.per_token and not hasattr(schedule, "exponents"):
            raise ValueError(
                f"The exact sampler supports shared schedules and GenMD4's per-token polynomial, not "
                f"{schedule.name}; use the ancestral sampler."
            )

    def run(self, net, schedule, z, mask_id, options, generator, observe):
        observe(z)
        if schedule.per_token:
            w = schedule.exponents.detach().double()
            return self._run_per_token(net, w, z, mask_id, options, generator, observe)
        batch = z.shape[0]
        t = torch.ones(batch, dtype=torch.float64, device=z.device)
        while True:
            masked = (z == mask_id).reshape(batch, -1)
            count = masked.sum(1)
            if not bool(count.any()):
                return z
            active = count > 0
            t = torch.where(active, next_unmask_time(schedule, t, count, generator), t)
            probs = net(z, t)
            probs = probs.reshape(batch, -1, probs.shape[-1])
            choice = categorical(masked.double(), generator, "float64")  # uniform among the masked positions
            token = categorical(probs[torch.arange(batch, device=z.device), choice], generator, options.categorical)
            z = _unmask(z, active, choice, token)
            observe(z)

    @staticmethod
    def _run_per_token(net, w, z, mask_id, options, generator, observe):
        batch = z.shape[0]
        w_max = float(w.max())
        t = torch.ones(batch, dtype=torch.float64, device=z.device)
        rows = torch.arange(batch, device=z.device)
        while True:
            masked = (z == mask_id).reshape(batch, -1)
            count = masked.sum(1)
            if not bool(count.any()):
                return z
            active = count > 0
            u = torch.rand(batch, dtype=torch.float64, device=z.device, generator=generator)
            t = torch.where(active, t * u ** (1.0 / (count.clamp_min(1) * w_max)), t)
            probs = net(z, t).double()
            probs = probs.reshape(batch, -1, probs.shape[-1])
            rates = (probs * w).sum(-1) * masked  # sum_v mu_n[v] w_v for each masked position
            keep = torch.rand(batch, dtype=torch.float64, device=z.device, generator=generator)
            accepted = active & (keep * count.clamp_min(1) * w_max < rates.sum(1))
            if bool(accepted.any()):
                choice = categorical(rates, generator, "float64")
                token = categorical(probs[rows, choice] * w, generator, options.categorical)
                z = _unmask(z, accepted, choice, token)
                observe(z)


class ConfidentSampler(Sampler):
    """MaskGIT's parallel decoding (Chang et al. 2022): each of ``steps`` network calls unmasks the masked positions
    where mu is most confident, confidence being max_v mu[v] (MaskGIT ranks by the drawn token's probability, with
    noise), and draws their tokens from mu.

    A row with m masked positions and r calls left unmasks ceil(m / r) of them, so all are unmasked after
    min(steps, max m) calls. The positions are ranked before any token is drawn (ties to the first), so each
    token is a plain draw from mu at its position; but neither the order nor the joint unmasking of several
    positions from their separate marginals is the reverse process, so the samples are approximate even at one
    token per call. The network sees the t at which 1 - alpha(t) is the row's masked fraction (the fraction
    itself for a per-token schedule, which this sampler otherwise ignores).
    """

    description = "MaskGIT-style: each of --steps calls unmasks the most confident masked positions (approximate)"
    uses_grid = False

    def run(self, net, schedule, z, mask_id, options, generator, observe):
        observe(z)
        batch, shape = z.shape[0], z.shape
        z = z.reshape(batch, -1)
        masked = z == mask_id
        calls = min(options.steps, int(masked.sum(1).max()))
        rank = torch.arange(z.shape[1], device=z.device)
        for i in range(calls):
            count = masked.sum(1)
            fraction = count.double() / z.shape[1]
            t = fraction if schedule.per_token else inverse_alpha(schedule, 1.0 - fraction)
            probs = net(z.reshape(shape), t).reshape(batch, z.shape[1], -1)
            confidence = torch.where(masked, probs.amax(-1), -1.0)
            order = confidence.argsort(dim=1, descending=True, stable=True)
            take = (count + calls - i - 1) // (calls - i)  # ceil(m / r)
            chosen = torch.zeros_like(masked).scatter(1, order, rank < take[:, None])
            z = torch.where(chosen, categorical(probs, generator, options.categorical), z)
            masked = masked & ~chosen
            observe(z.reshape(shape))
        return z.reshape(shape)


def _unmask(z: torch.Tensor, rows: torch.Tensor, position: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """z with ``token`` written at the flat ``position`` of each row where ``rows`` is True."""
    batch = z.shape[0]
    flat = z.reshape(batch, -1).clone()
    chosen = rows.nonzero().squeeze(-1)
    flat[chosen, position[chosen]] = token[chosen]
    return flat.reshape(z.shape)


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


def _model_device(model) -> torch.device:
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")


@torch.no_grad()
def sample(
    model: Diffusion,
    num_samples: int | None = None,
    *,
    shape: tuple[int, ...] | None = None,
    steps: int = DEFAULT_STEPS,
    sampler: str = "ancestral",
    grid: str = "uniform",
    top_p: float = 0.98,
    categorical: str = "float64",
    init: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    guidance: float = 1.0,
    snapshots: int = 0,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    device: torch.device | str | None = None,
) -> SampleOutput:
    """Run the reverse process of ``model`` from all-mask z_1 (or ``init``) to clean tokens.

    Args:
        model: an :class:`md4.MD4` (its denoiser, schedule and vocabulary are used as trained).
        num_samples: how many samples; with ``shape`` (default ``model.data_shape``) it gives z_1's shape.
        steps: reverse steps T on the time grid (unused by ``exact``); network calls for ``confident``.
        sampler: a name in :data:`SAMPLERS`: ``ancestral``, ``top_p``, ``mean``, ``exact`` or ``confident``.
        grid: ``uniform`` or ``cosine`` time grid.
        top_p: nucleus mass for ``top_p``.
        categorical: ``float64`` (exact draws) or ``float32-gumbel`` (the release's truncating draws).
        init: conditioning: tokens [B, *data_shape] that stay fixed, with the mask id V at positions to generate
            (see :func:`prefix_init` for a prefix; any pattern of holes gives infilling). Replaces num_samples.
        labels: class labels [B] for a class-conditional model.
        guidance: classifier-free guidance weight: 1 conditions on the labels, 0 ignores them, > 1 follows them
            more closely (needs a model trained with label dropout).
        snapshots: keep this many states of the reverse process, from all-mask to the samples (for a picture).
        generator / seed: the source of randomness (one of them, or neither for the global RNG).

    Returns:
        :class:`SampleOutput` with tokens (no mask id left) and the number of network calls (NFE).
    """
    options = SamplingOptions(steps=steps, grid=grid, top_p=top_p, categorical=categorical)
    chosen = get_sampler(sampler)
    chosen.check(model.schedule)
    mask_id = int(model.vocab_size)
    shape = shape or model.data_shape
    if init is not None:
        check_tokens(init, model.vocab_size, allow_mask=True, name="init")
        if num_samples is not None and tuple(init.shape) != (num_samples, *(shape or init.shape[1:])):
            raise ValueError(
                f"init has shape {tuple(init.shape)} but {num_samples} samples of shape {shape} were asked for; "
                "pass init alone."
            )
        z = init.clone().long()
    else:
        if num_samples is None or shape is None:
            raise ValueError("Pass num_samples (and shape, unless the model has a data_shape), or init.")
        if int(num_samples) != num_samples or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples}.")
        device = torch.device(device) if device is not None else _model_device(model)
        z = torch.full((int(num_samples), *shape), mask_id, dtype=torch.long, device=device)
    if labels is not None:
        classes = getattr(model, "num_classes", None)
        if classes is None:
            raise ValueError("Labels were given but the model is not class-conditional; leave them out.")
        if labels.shape != (z.shape[0],) or int(labels.min()) < 0 or int(labels.max()) > classes:
            raise ValueError(
                f"labels must be one class id per sample in 0..{classes - 1} ({classes} means no label), "
                f"got shape {tuple(labels.shape)} and ids {int(labels.min())}..{int(labels.max())}."
            )
    net = Network(model, labels, guidance)
    generator = _resolve_generator(generator, seed, z.device)
    trajectory = Trajectory(snapshots, mask_id)
    tokens = chosen.run(net, model.schedule, z, mask_id, options, generator, trajectory)
    return SampleOutput(tokens=tokens, nfe=net.nfe, trajectory=trajectory.states)
