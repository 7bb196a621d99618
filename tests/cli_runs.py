"""What the tests that run the ``md4`` command share: a tiny text model's overrides, running the command in this
process, and reading its one error sentence."""

from __future__ import annotations

from md4.cli import main

TINY_TEXT = [
    "net.dim=32",
    "net.n_layers=1",
    "net.n_heads=2",
    "data.seq_len=32",
    "train.batch_size=4",
    "train.log_every=1",
    "train.eval_every=100",
    "train.eval_batches=1",
    "train.sample_every=100",
    "train.sample_steps=4",
    "train.checkpoint_every=2",
    "train.warmup_steps=1",
]


def cli(capsys, *argv):
    """Run ``md4 ARGV`` in this process: its exit code, stdout and stderr."""
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def last_error(err: str) -> str:
    """The ``md4: error:`` sentence that ends ``err`` (and no traceback before it)."""
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("md4: error: ") and "Traceback" not in err, err
    return lines[-1]


def one_error(err: str) -> str:
    """The one ``md4: error:`` sentence in ``err``: printed once, with no traceback of md4's or torchrun's."""
    lines = [line for line in err.strip().splitlines() if line.startswith("md4: error: ")]
    assert len(lines) == 1 and "Traceback" not in err and "ChildFailedError" not in err, err
    return lines[0]
