"""End to end through the `md4` command: train, checkpoint, resume, sample, evaluate; and its errors."""

import json

import pytest

from md4.cli import main

TINY = [
    "net.dim=32",
    "net.n_layers=1",
    "net.n_heads=2",
    "data.seq_len=32",
    "train.batch_size=4",
    "train.eval_every=2",
    "train.eval_batches=1",
    "train.sample_every=4",
    "train.sample_steps=8",
    "train.checkpoint_every=2",
    "train.warmup_steps=1",
]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_train_resume_sample_eval(corpus, tmp_path, capsys):
    out_dir = tmp_path / "run"
    code, out, _ = run(capsys, "train", "--data", corpus, "--out", out_dir, "--no-progress", "train.steps=2", *TINY)
    assert code == 0 and "finished at step 2" in out
    code, out, _ = run(capsys, "train", "--out", out_dir, "--resume", "--no-progress", "train.steps=4")
    assert code == 0 and "finished at step 4" in out
    assert json.loads((out_dir / "config.json").read_text())["train"]["steps"] == 4

    code, out, err = run(capsys, "sample", out_dir, "--num", 2, "--steps", 8, "--prompt", "To be")
    assert code == 0 and out.count("=== sample") == 2 and "network calls" in err
    samples = [block.split("\n", 1)[1] for block in out.split("=== sample")[1:]]
    assert all(text.startswith("To be") for text in samples)
    code, out, _ = run(
        capsys,
        "sample",
        out_dir,
        "--num",
        1,
        "--steps",
        8,
        "--infill",
        "To be, or ___ to be",
        "--sampler",
        "top_p",
        "--grid",
        "cosine",
        "--categorical",
        "float32-gumbel",
    )
    text = out.split("\n", 1)[1].rstrip("\n")
    assert code == 0 and len(text) == len("To be, or ___ to be")
    assert text.startswith("To be, or ") and text.endswith(" to be")

    code, out, _ = run(
        capsys, "eval", out_dir, "--split", "test", "--max-batches", 2, "--steps", 50, "--draws", 2, "--json"
    )
    result = json.loads(out)
    assert code == 0 and result["step"] == 4
    for key in ("continuous", "discrete"):
        assert result[key]["draws"] == 2 and result[key]["bits_per_token"] > 0 and result[key]["stderr"] > 0
    assert result["discrete"]["num_steps"] == 50

    code, _, err = run(capsys, "sample", out_dir, "--prompt", "To be§")
    assert code == 2 and "md4: error:" in err and "'§'" in err
    code, _, err = run(capsys, "sample", out_dir, "--num", 0)
    assert code == 2 and "--num" in err

    unseen = tmp_path / "unseen.txt"
    unseen.write_text("that is the question, to be or not to be. " * 20)
    code, out, _ = run(capsys, "eval", out_dir, "--data", unseen)
    assert code == 0 and "continuous bound" in out and "discrete T=1000 bound" in out


def test_data_prepare_a_local_file(corpus, capsys):
    code, out, _ = run(capsys, "data", "prepare", corpus)
    assert code == 0 and "vocabulary" in out and "train" in out and "test" in out


def test_presets_and_data_listing(capsys):
    code, out, _ = run(capsys, "presets")
    assert code == 0 and "shakespeare-char" in out and "text8" in out and "owt-gpt2-small" in out
    code, out, _ = run(capsys, "presets", "text8")
    assert "n_layers = 12" in out
    code, out, _ = run(capsys, "data", "list")
    assert "shakespeare" in out and "hf:NAME" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--preset", "nope"], "Unknown preset 'nope'; available presets are"),
        (["train", "train.nope=1"], "Unknown config key train.nope"),
        (["train", "lr"], "Malformed override"),
        (["train", "train.steps=ten"], "train.steps must be int"),
        (["train", "train.precision=fp8"], "train.precision must be one of"),
        (["train", "--data", "/nonexistent/file.txt"], "no file or folder"),
        (["sample", "/nonexistent/run"], "not an md4 run directory"),
        (["train", "--resume", "--out", "/nonexistent/run"], "Nothing to resume"),
    ],
)
def test_bad_input_is_one_clear_sentence(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MD4_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *argv)
    last = err.strip().splitlines()[-1]
    assert code == 2 and message in last and last.startswith("md4: error: ") and "Traceback" not in err


@pytest.mark.parametrize("content, message", [(b"", "empty"), (b"\x00\x01\x02binary", "binary")])
def test_empty_or_binary_data_file(content, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MD4_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "data.txt"
    path.write_bytes(content)
    code, _, err = run(capsys, "train", "--data", path, "--out", tmp_path / "run", *TINY)
    assert code == 2 and message in err
    assert not (tmp_path / "run").exists()


def test_help_explains_every_option(capsys):
    import argparse

    from md4.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        for action in sub._actions:
            assert action.help, f"md4 {name}: option {action.dest} has no help text"
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    assert "--top-p" in capsys.readouterr().out


@pytest.mark.slow  # ~35 s; tests/test_demo.py runs the demo's flows in the default suite
def test_demo_trains_samples_evaluates_and_can_rerun(tmp_path, capsys, monkeypatch, shakespeare_cache):
    monkeypatch.setenv("MD4_CACHE_DIR", str(shakespeare_cache))
    out_dir = tmp_path / "demo"
    args = [
        "demo",
        "--out",
        out_dir,
        "--no-progress",
        *TINY,
        "train.steps=2",
        "train.batch_size=256",
        "train.sample_steps=4",
    ]
    code, out, _ = run(capsys, *args)
    summary = json.loads((out_dir / "demo.json").read_text())
    assert code == 0 and "test bits/char <=" in out and "=== prompted sample ('ROMEO:') ===\nROMEO:" in out
    assert summary["test_bits_per_char"] > 0 and summary["valid_bits_per_char"] > 0
    assert summary["sample_prompted"].startswith("ROMEO:") and (out_dir / "curves.png").exists()
    code, out, _ = run(capsys, *args)  # a finished demo reruns its sampling and evaluation
    assert (
        code == 0
        and json.loads((out_dir / "demo.json").read_text())["test_bits_per_char"] == summary["test_bits_per_char"]
    )


@pytest.mark.slow
def test_sample_with_a_compiled_network_draws_as_many_calls_as_the_eager_one(corpus, tmp_path, capsys):
    """``md4 sample --compile``: the same sampler, the network under torch.compile (which positions unmask is drawn
    before the network is asked, so the calls are the same for a seed)."""
    out_dir = tmp_path / "run"
    code, _, _ = run(capsys, "train", "--data", corpus, "--out", out_dir, "--no-progress", "train.steps=2", *TINY)
    assert code == 0
    calls = {}
    for flags in ((), ("--compile",)):
        code, out, err = run(capsys, "sample", out_dir, "--num", 2, "--steps", 16, "--prompt", "To be", *flags)
        assert code == 0 and out.count("=== sample") == 2, err
        assert all(block.split("\n", 1)[1].startswith("To be") for block in out.split("=== sample")[1:])
        calls[flags] = err.split(" network calls")[0].rsplit(", ", 1)[-1]
    assert calls[()] == calls[("--compile",)]
