"""Exported models (md4 export, md4.from_pretrained, md4.Pipeline, md4 train --init, md4 push): the folder gives the
run's model exactly, its model card holds the run's numbers and a command that rebuilds its config, and every bad
folder is one sentence."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from cli_runs import TINY_TEXT, cli, last_error
from safetensors.torch import load_file, save_file

import md4
from md4.cli import main
from md4.config import build_config
from md4.runs.directory import load_run
from md4.runs.pretrained import export_run, from_pretrained

TEXT = [*TINY_TEXT, "train.steps=4", "train.eval_every=4", "train.sample_every=4", "train.precision=fp32"]
IMAGES = [
    "model.net=unet",
    "model.conditional=true",
    "net.feature_dim=32",
    "net.n_layers=1",
    "train.batch_size=8",
    "train.steps=2",
    "train.eval_every=2",
    "train.eval_batches=1",
    "train.sample_every=2",
    "train.sample_steps=2",
    "train.checkpoint_every=2",
    "train.warmup_steps=1",
    "train.precision=fp32",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shakespeare_cache, registry_images):
    """Three tiny trained runs: MD4 and GenMD4 on Shakespeare's characters, a class-conditional UNet on digits."""
    root = tmp_path_factory.mktemp("pretrained")
    made = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MD4_CACHE_DIR", str(shakespeare_cache))
        for name, extra in (("md4", []), ("genmd4", ["model.kind=genmd4"])):
            made[name] = root / name
            assert (
                main(["train", "--data", "shakespeare", "--out", str(made[name]), "--no-progress", *TEXT, *extra]) == 0
            )
        mp.setenv("MD4_CACHE_DIR", str(registry_images))
        made["digits"] = root / "digits"
        assert main(["train", "--data", "digits", "--out", str(made["digits"]), "--no-progress", *IMAGES]) == 0
    return made


@pytest.mark.parametrize("name", ["md4", "genmd4", "digits"])
def test_an_export_gives_the_runs_logits_and_samples(runs, name, tmp_path):
    out = export_run(runs[name], tmp_path / "export")
    assert {p.name for p in out.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "README.md",
        f"sample.{'png' if name == 'digits' else 'txt'}",
    }
    run, exported = load_run(runs[name], device="cpu"), from_pretrained(out, device="cpu")
    assert exported.step == run.step == (2 if name == "digits" else 4)
    assert exported.codec.to_dict() == run.codec.to_dict() and exported.spec == run.spec
    shape = (3, *run.spec.data_shape)
    z = torch.randint(0, run.spec.vocab_size + 1, shape, generator=torch.Generator().manual_seed(1))
    t = torch.rand(3, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 2]) if name == "digits" else None
    with torch.no_grad():
        same = [
            m.model.denoiser(z, t, labels) if labels is not None else m.model.denoiser(z, t) for m in (run, exported)
        ]
    assert torch.equal(*same)
    drawn = [
        md4.sample(m.model, 2, steps=4, seed=7, labels=None if labels is None else labels[:2]).tokens
        for m in (run, exported)
    ]
    assert torch.equal(*drawn)
    if name == "genmd4":  # the learned schedule travels with the weights
        assert any("schedule" in key for key in load_file(out / "model.safetensors"))


def test_the_pipeline_draws_what_generate_draws_and_infills(runs, tmp_path):
    out = export_run(runs["md4"], tmp_path / "export")
    pipe = md4.Pipeline.from_pretrained(out, device="cpu", precision="fp32")
    run = load_run(runs["md4"], device="cpu")
    expected = md4.generate(run.model, run.codec, 2, prompt="ROMEO:", steps=4, seed=3, precision="fp32").texts
    assert pipe.generate(num=2, prompt="ROMEO:", steps=4, seed=3) == expected
    assert all(text.startswith("ROMEO:") for text in expected)
    filled = pipe.infill("To be, or ___ to be", steps=4, seed=0, num=2)
    assert all(len(text) == len("To be, or ___ to be") and text.startswith("To be, or ") for text in filled)
    pictures = md4.Pipeline.from_pretrained(export_run(runs["digits"], tmp_path / "digits"), device="cpu")(
        num=3, steps=2
    )
    assert pictures.shape == (3, 8, 8, 3) and pictures.dtype.name == "uint8"


def test_the_model_card_holds_the_runs_numbers_and_a_command_that_rebuilds_its_config(runs, tmp_path):
    out = export_run(runs["md4"], tmp_path / "export", license_id="mit", repo_id="someone/tiny-md4")
    card = (out / "README.md").read_text()
    front = card.split("---")[1]
    assert "library_name: md4" in front and "license: mit" in front and "- masked-diffusion" in front
    last = [json.loads(line) for line in (runs["md4"] / "metrics.jsonl").read_text().splitlines()]
    valid = [row for row in last if row.get("split") == "valid"][-1]
    assert f"{valid['bits_per_token']:.4f} ± {valid['bits_per_token_stderr']:.4f} bits/token" in card
    assert "md4 sample hf:someone/tiny-md4" in card and "Shi, Jiaxin" in card
    sample = (runs["md4"] / "samples" / "step_00000004.txt").read_text().split("\n\n----------\n\n")[0].strip()
    assert sample[:200] in card
    command = re.search(r"^md4 train --preset (\S+) --data (\S+) (.*)$", card, re.MULTILINE)
    rebuilt = build_config(command[1], command[3].split(), data=command[2])
    assert rebuilt.to_dict() == load_run(runs["md4"]).config.to_dict()


def test_an_exported_folder_is_evaluated_and_the_card_carries_the_report(runs, tmp_path, capsys, shakespeare_cache,
                                                                          monkeypatch):  # fmt: skip
    monkeypatch.setenv("MD4_CACHE_DIR", str(shakespeare_cache))
    run = tmp_path / "run"
    shutil.copytree(runs["md4"], run)
    out = export_run(run, tmp_path / "export")
    suite = ["--suite", "--max-batches", 1, "--scorer", "ngram:2", "--samples", 2, "--sample-steps", 2, "--sampler",
             "ancestral", "--no-progress"]  # fmt: skip
    code, _, err = cli(capsys, "eval", out, *suite)
    assert code == 0 and (out / "eval.json").is_file(), err  # an exported folder holds its own report
    code, _, err = cli(capsys, "eval", run, *suite)
    assert code == 0, err
    report = json.loads((run / "eval.json").read_text())
    card = (export_run(run, tmp_path / "export2") / "README.md").read_text()
    bound = report["continuous"]
    assert f"{bound['bits_per_token']:.4f} ± {bound['bits_per_token_stderr']:.4f}" in card
    assert "### Likelihood on" in card  # the report's headings under the card's own
    assert (tmp_path / "export2" / "eval.json").read_text() == (run / "eval.json").read_text()


def test_fine_tuning_starts_from_the_exported_weights(runs, tmp_path, shakespeare_cache, monkeypatch, capsys):
    monkeypatch.setenv("MD4_CACHE_DIR", str(shakespeare_cache))
    out = export_run(runs["md4"], tmp_path / "export")
    tuned = tmp_path / "tuned"
    code, _, err = cli(capsys, "train", "--init", out, "--out", tuned, "--no-progress", "train.steps=1", "train.lr=1e-12",
                       "train.warmup_steps=0", "train.ema_decay=0", "train.checkpoint_every=1")  # fmt: skip
    assert code == 0, err
    assert f"starting from {out} (step 4)" in err
    assert json.loads((tuned / "init.json").read_text()) == {"from": str(out), "step": 4}
    start = load_file(out / "model.safetensors")
    after = load_run(tuned, device="cpu").model.state_dict()
    assert all(torch.allclose(after[k], start[k], atol=1e-6) for k in start)  # one step at lr 1e-12 moves nothing
    assert "Fine-tuned from" in (export_run(tuned, tmp_path / "tuned-export") / "README.md").read_text()


def test_fine_tuning_refuses_data_tokenised_otherwise_and_weights_that_do_not_fit(runs, tmp_path, corpus, capsys):
    out = export_run(runs["md4"], tmp_path / "export")
    code, _, err = cli(capsys, "train", "--init", out, "--data", corpus, "--out", tmp_path / "a", "train.steps=1")
    assert (
        code != 0
        and "tokenised by a char codec of 84 tokens, and this data is tokenised by a char codec" in last_error(err)
    )
    code, _, err = cli(
        capsys,
        "train",
        "--init",
        out,
        "--out",
        tmp_path / "b",
        "train.steps=1",
        "net.n_layers=2",
        "--data",
        "shakespeare",
    )
    assert code != 0 and "do not fit the model this config describes" in last_error(err)
    code, _, err = cli(capsys, "train", "--init", out, "--resume", "--out", tmp_path / "c")
    assert code != 0 and "pass one" in last_error(err)


def _edit_header(folder, **changes):
    header = json.loads((folder / "config.json").read_text())
    header.update(changes)
    (folder / "config.json").write_text(json.dumps(header))


def test_bad_folders_are_one_sentence(runs, tmp_path, capsys):
    out = export_run(runs["md4"], tmp_path / "export")
    cases = {}
    empty = tmp_path / "empty"
    empty.mkdir()
    cases["no config.json"] = empty
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 30522}))
    cases["not md4's"] = other
    old = tmp_path / "old"
    export_run(runs["md4"], old)
    _edit_header(old, export_format=0, md4_version="0.1.0")
    cases["exported by md4 0.1.0 in format 0"] = old
    edited = tmp_path / "edited"
    export_run(runs["md4"], edited)
    header = json.loads((edited / "config.json").read_text())
    header["config"]["net"]["n_layers"] = 3
    (edited / "config.json").write_text(json.dumps(header))
    cases["do not fit the model its config.json describes"] = edited
    broken = tmp_path / "broken"
    export_run(runs["md4"], broken)
    state = load_file(broken / "model.safetensors")
    state[next(iter(state))] = torch.full_like(state[next(iter(state))], float("nan"))
    save_file(state, broken / "model.safetensors")
    cases["non-finite weights"] = broken
    for message, folder in cases.items():
        code, _, err = cli(capsys, "sample", folder, "--num", 1, "--steps", 2)
        assert code != 0 and message in last_error(err), (message, err)
    code, _, err = cli(capsys, "sample", out, "--checkpoint", 4)
    assert code != 0 and "holds one set of weights" in last_error(err)


def test_export_never_writes_over_a_users_files(runs, tmp_path, capsys):
    taken = tmp_path / "mine"
    taken.mkdir()
    (taken / "notes.txt").write_text("my notes")
    code, _, err = cli(capsys, "export", runs["md4"], taken)
    assert code != 0 and "is not empty and is not an md4 export" in last_error(err)
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]
    code, _, err = cli(capsys, "export", runs["md4"], runs["md4"] / "inside")
    assert code != 0 and "inside the run" in last_error(err)
    first = export_run(runs["md4"], tmp_path / "again")
    assert export_run(runs["md4"], first, raw=True) == first  # an earlier export is replaced
    assert json.loads((first / "config.json").read_text())["checkpoint"]["weights"] == "raw"


def test_the_hub_offline_is_one_sentence(runs, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = cli(capsys, "sample", "hf:someone/no-such-md4-model", "--num", 1)
    assert code != 0 and "could not download hf:someone/no-such-md4-model" in last_error(err)
    code, _, err = cli(capsys, "push", runs["md4"], "someone/tiny-md4")
    assert code != 0 and "could not upload to hf:someone/tiny-md4" in last_error(err)
    code, _, err = cli(capsys, "push", runs["md4"], "not a repo id")
    assert code != 0 and "is not a Hub repository id" in last_error(err)


def test_a_bpe_run_exports_its_tokenizer_for_hub_tools(tmp_path, corpus, capsys):
    from tokenizers import Tokenizer

    run = tmp_path / "bpe"
    argv = ["train", "--data", corpus, "--out", run, "--no-progress", *TEXT, "train.steps=2", "data.tokenizer=bpe:300"]
    assert cli(capsys, *argv)[0] == 0
    out = export_run(run, tmp_path / "export")
    loaded = from_pretrained(out, device="cpu")
    text = "To be, or not to be, that is the question 7."
    assert Tokenizer.from_file(str(out / "tokenizer.json")).encode(text).ids == loaded.codec.encode(text).tolist()
    assert loaded.codec.decode(loaded.codec.encode(text)) == text
    card = (out / "README.md").read_text()
    assert "bits/char)" in card and "data.tokenizer=bpe:300" in card
