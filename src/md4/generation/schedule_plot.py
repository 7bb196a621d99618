"""A picture of a learned per-token schedule (GenMD4): the exponents w_v, sorted, and alpha_v(t) at the extremes.

alpha_v(t) = 1 - (1 - eps) t^{w_v}: a token with a large w stays unmasked longer in the forward process (it is
masked late), so the reverse process decodes it early; a small w means masked early and decoded late.
"""

from __future__ import annotations

from pathlib import Path

import torch

from md4.core.token_schedule import TokenPolynomialSchedule
from md4.data import Tokenizer
from md4.files import atomic_output

MAX_LABELLED = 40  # larger vocabularies show their lowest and highest tokens only
EXTREMES = 3  # curves drawn at each end


def token_label(codec, v: int) -> str:
    """A printable label for token v: its text with whitespace made visible, or its id."""
    if not isinstance(codec, Tokenizer):
        return str(v)
    text = codec.decode([v])
    visible = text.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥")
    return visible if visible.isprintable() and visible else repr(text)


def learned_schedule(model) -> TokenPolynomialSchedule:
    """The model's per-token schedule; a shared one is refused in one sentence."""
    schedule = model.schedule
    if not schedule.per_token:
        raise ValueError(
            f"This model's schedule ({schedule.name}) is shared by every token, so there is no learned "
            "per-token schedule to show; inspect a GenMD4 run (model.kind=genmd4)."
        )
    if not isinstance(schedule, TokenPolynomialSchedule):
        raise ValueError(f"Only GenMD4's per-token polynomial schedule can be shown, not {schedule.name}.")
    return schedule


def ranked_exponents(model, codec) -> list[tuple[float, str]]:
    """(w_v, label) for every token, smallest w first."""
    w = learned_schedule(model).exponents.detach().cpu().double()
    order = torch.argsort(w).tolist()
    return [(float(w[v]), token_label(codec, v)) for v in order]


def plot_schedule(model, codec, path: Path, title: str = "") -> Path:
    """Write the PNG of a GenMD4 model's learned schedule to ``path`` and return it."""
    eps = learned_schedule(model).eps
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranked = ranked_exponents(model, codec)
    shown = ranked if len(ranked) <= MAX_LABELLED else ranked[: MAX_LABELLED // 2] + ranked[-MAX_LABELLED // 2 :]
    fig, (bars, curves) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [2.2, 1]})
    bars.bar(range(len(shown)), [w for w, _ in shown], color="tab:blue")
    bars.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="w = 1 (linear, MD4)")
    bars.set_xticks(range(len(shown)), [label for _, label in shown], fontsize=8, rotation=90 if len(shown) > 60 else 0)
    if len(shown) < len(ranked):
        bars.axvline(len(shown) / 2 - 0.5, color="black", linewidth=0.8)
        bars.set_title(f"learned exponents w: the {len(shown) // 2} lowest and highest of {len(ranked)} tokens")
    else:
        bars.set_title("learned exponents w, sorted (small: masked early, decoded late)")
    bars.set_ylabel("w")
    bars.legend(loc="upper left")
    t = torch.linspace(0, 1, 201, dtype=torch.float64)
    for w, label in ranked[:EXTREMES] + ranked[-EXTREMES:]:
        curves.plot(t, 1 - (1 - eps) * t**w, label=f"{label!s} (w={w:.2f})")
    curves.plot(t, 1 - t, "k--", linewidth=1, label="linear")
    curves.set_xlabel("t")
    curves.set_ylabel("alpha_v(t), P(unmasked)")
    curves.set_title("the extremes")
    curves.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_output(Path(path)) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return Path(path)
