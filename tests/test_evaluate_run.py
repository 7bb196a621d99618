"""A run's evaluation in the library, without the CLI: which bounds a kind has, what a bit is counted per, and
:func:`md4.evaluate.evaluate_run` on a tiny trained run (the loop behind ``md4 eval`` and the demo)."""

import pytest
from cli_runs import TINY_TEXT

from md4 import MD4, GenMD4, Transformer, TransformerConfig
from md4.config import build_config
from md4.data import CharTokenizer, ImageCodec, RawCodec
from md4.evaluate import estimate_nelbo, evaluate_run, has_discrete_bound, unit_of
from md4.held_out import held_out_batches
from md4.runs.directory import load_run
from md4.training.trainer import train


@pytest.fixture
def text_run(corpus, tmp_path):
    """A tiny MD4 trained for 2 steps on the corpus, loaded."""
    config = build_config(None, ["train.steps=2", *TINY_TEXT], data=str(corpus))
    train(config, tmp_path / "run", progress=False)
    return load_run(tmp_path / "run", device="cpu")


def test_what_a_bit_is_counted_per():
    assert unit_of(ImageCodec(2, 2, 1)) == "dim"
    assert unit_of(CharTokenizer("ab")) == "char"
    assert unit_of(RawCodec(5)) == "token"


def test_md4_has_the_discrete_bound_and_genmd4_has_not():
    net = Transformer(TransformerConfig(vocab_size=4, dim=16, n_layers=1, n_heads=2))
    assert has_discrete_bound(MD4(net, 4, data_shape=(6,)))
    assert not has_discrete_bound(GenMD4(net, 4, data_shape=(6,)))


def test_evaluate_run_estimates_both_bounds_as_md4_eval_does(text_run):
    evaluation = evaluate_run(text_run, max_batches=2, steps=10, seed=3)
    assert list(evaluation.bounds) == ["continuous", "discrete"] and evaluation.data.endswith("[test split]")
    for num_steps, estimate in zip((None, 10), evaluation.bounds.values()):
        held_out = held_out_batches(text_run, None, "test", text_run.config.train.batch_size, 2)
        direct = estimate_nelbo(text_run.model, held_out.batches, num_steps=num_steps, seed=3)
        assert (
            estimate == direct.with_characters(1.0) and estimate.num_sequences == 2 * text_run.config.train.batch_size
        )
    result = evaluation.to_dict()
    assert list(result) == ["data", "continuous", "discrete"] and result["discrete"]["num_steps"] == 10


def test_evaluate_run_reports_each_bound_and_can_skip_the_discrete_one(text_run):
    events = []

    def progress(label, held_out):
        events.append(("start", label, held_out.count))
        return held_out.batches

    def on_bound(label, estimate):
        events.append(("end", label, estimate.num_sequences))

    evaluation = evaluate_run(
        text_run, split="valid", batch_size=2, max_batches=1, steps=None, progress=progress, on_bound=on_bound
    )
    assert list(evaluation.bounds) == ["continuous"] and evaluation.data.endswith("[valid split]")
    assert events == [("start", "continuous", 1), ("end", "continuous", 2)]
    events.clear()
    evaluate_run(text_run, batch_size=2, max_batches=1, steps=4, progress=progress, on_bound=on_bound)
    assert [event[:2] for event in events] == [
        ("start", "continuous"),
        ("end", "continuous"),
        ("start", "discrete T=4"),
        ("end", "discrete T=4"),
    ]


def test_evaluate_run_gives_the_same_bounds_in_any_micro_batch(text_run):
    """md4 eval's default micro-batch (the run's training micro-batch) and one sequence at a time."""
    whole = evaluate_run(text_run, max_batches=2, steps=10, seed=3)
    split = evaluate_run(text_run, max_batches=2, steps=10, seed=3, micro_batch=1)
    for name, estimate in whole.bounds.items():
        assert split.bounds[name].nelbo == pytest.approx(estimate.nelbo, rel=1e-6)
        assert split.bounds[name].num_sequences == estimate.num_sequences
