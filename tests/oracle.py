"""A known joint distribution over V^D and its exact conditionals, for exactness tests."""

from __future__ import annotations

import itertools
import math

import torch

from md4.nn.contract import DenoiserCapabilities


class OracleDenoiser:
    """Returns log p(x_n = k | unmasked tokens of z) by enumerating a probability table.

    It ignores t (the optimal denoiser is time-independent), so it declares ``time_independent``.
    """

    capabilities = DenoiserCapabilities(time_independent=True)

    def __init__(self, vocab_size: int = 3, length: int = 4, concentration: float = 0.3, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.vocab_size, self.length = vocab_size, length
        self.configs = torch.tensor(list(itertools.product(range(vocab_size), repeat=length)))
        # u^(1/c) for small c spreads the mass unevenly, so tokens are strongly correlated.
        probs = torch.rand(len(self.configs), dtype=torch.float64, generator=g) ** (1.0 / concentration) + 1e-4
        self.probs = probs / probs.sum()
        self.calls = 0

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) for rows x [B, D]."""
        index = (x * (self.vocab_size ** torch.arange(self.length - 1, -1, -1))).sum(-1)
        return torch.log(self.probs[index])

    def __call__(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        mask_id = self.vocab_size
        consistent = ((z[:, None, :] == mask_id) | (z[:, None, :] == self.configs[None])).all(-1)
        weights = self.probs[None] * consistent  # [B, C]
        onehot = torch.nn.functional.one_hot(self.configs, self.vocab_size).double()  # [C, D, V]
        marg = torch.einsum("bc,cdv->bdv", weights, onehot)
        marg = marg / marg.sum(-1, keepdim=True)
        return torch.log(marg.clamp_min(1e-300)).float()

    def entropy(self) -> float:
        """H(p) in nats: the lower bound of E_p[L_T] for any T."""
        return float(-(self.probs * torch.log(self.probs)).sum())

    def exact_discrete_nelbo(self, schedule, num_steps: int) -> torch.Tensor:
        """L_T(x) for every configuration x (rows of ``configs``), by enumerating mask patterns (paper Eq. 3).

        With the exact conditionals the cross-entropy of a mask pattern M does not depend on t,
        CE(x, M) = sum_{n in M} -log p(x_n | x outside M), so
        L_T(x) = sum_i (a_s - a_t) / (1 - a_t) sum_M a_t^(D - |M|) (1 - a_t)^|M| CE(x, M) + reconstruction.
        """
        mask_id, d = self.vocab_size, self.length
        patterns = torch.tensor(list(itertools.product([False, True], repeat=d)))  # [P, D]
        x = self.configs[None].expand(len(patterns), -1, -1)  # [P, C, D]
        z = torch.where(patterns[:, None, :], torch.full_like(x, mask_id), x).reshape(-1, d)
        logp = self(z, None).double().gather(-1, x.reshape(-1, d)[:, :, None]).squeeze(-1)
        ce = -(logp.reshape(len(patterns), -1, d) * patterns[:, None, :]).sum(-1)  # [P, C]
        num_masked = patterns.sum(-1).double()
        total = torch.zeros(len(self.configs), dtype=torch.float64)
        for i in range(1, num_steps + 1):
            at = float(schedule.alpha(torch.tensor(i / num_steps, dtype=torch.float64)))
            as_ = float(schedule.alpha(torch.tensor((i - 1) / num_steps, dtype=torch.float64)))
            p_pattern = at ** (d - num_masked) * (1 - at) ** num_masked
            total += (as_ - at) / (1 - at) * (p_pattern[:, None] * ce).sum(0)
        alpha0 = float(schedule.alpha(torch.tensor(0.0, dtype=torch.float64)))
        return total + d * (1 - alpha0) * math.log(self.vocab_size)


class StateDependentOracle(OracleDenoiser):
    """The exact posterior marginals of the same joint under GenMD4's per-token schedule.

    With alpha_v(t) = 1 - (1 - eps) t^{w_v}, being masked at t says something about a token's value: given z_t,
    a configuration c consistent with the unmasked tokens has weight p(c) prod_{masked n} t^{w_{c_n}}. So the
    optimal denoiser depends on t, unlike MD4's.
    """

    capabilities = DenoiserCapabilities(time_independent=False)

    def __init__(self, exponents, **kwargs):
        super().__init__(**kwargs)
        self.exponents = torch.as_tensor(exponents, dtype=torch.float64)

    def __call__(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        mask_id = self.vocab_size
        masked = z == mask_id  # [B, D]
        consistent = (masked[:, None, :] | (z[:, None, :] == self.configs[None])).all(-1)  # [B, C]
        w_of = self.exponents[self.configs]  # [C, D]
        log_t = torch.log(t.double().clamp_min(1e-300))[:, None, None]  # [B, 1, 1]
        log_weight = (masked[:, None, :] * w_of[None] * log_t).sum(-1)  # [B, C]
        weights = self.probs[None] * consistent * torch.exp(log_weight - log_weight.max(-1, keepdim=True).values)
        onehot = torch.nn.functional.one_hot(self.configs, self.vocab_size).double()
        marg = torch.einsum("bc,cdv->bdv", weights, onehot)
        marg = marg / marg.sum(-1, keepdim=True)
        return torch.log(marg.clamp_min(1e-300)).float()
