"""``model.net=hf-mlm``: a masked LM saved by transformers' ``save_pretrained`` (tiny, randomly initialised BERT and
ModernBERT folders, loaded by the code a real checkpoint goes through) as MD4's denoiser."""

import json
import shutil
import sys

import pytest
import torch
from cli_runs import cli
from mlm_folders import TEXT, save_masked_lm, wordpiece_tokenizer
from test_distributed import assert_same_parameters, run
from tiny_training import release

from md4.config import ConfigError, apply_overrides, load_preset
from md4.data import ArrayDataset, RawCodec
from md4.models import DataSpec, build_model
from md4.nn.hf_mlm import HFMaskedLM, HFMaskedLMConfig
from md4.runs.directory import load_run
from md4.runs.pretrained import from_pretrained
from md4.sampling import SAMPLER_NAMES, sample
from md4.training import Trainer

LENGTH = 16
TINY_RUN = [f"data.seq_len={LENGTH}", "train.batch_size=4", "train.precision=fp32", "train.warmup_steps=1",
            "train.log_every=1", "train.eval_every=100", "train.eval_batches=1", "train.sample_every=100",
            "train.checkpoint_every=100", "sample.steps=4"]  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer():
    return wordpiece_tokenizer()


@pytest.fixture(scope="module")
def bert(tmp_path_factory, tokenizer):
    return save_masked_lm(tmp_path_factory.mktemp("bert"), "bert", tokenizer=tokenizer)


@pytest.fixture(scope="module")
def modernbert(tmp_path_factory, tokenizer):
    """A ModernBERT whose embedding table has 7 padding rows beyond the tokenizer, like the released one's."""
    return save_masked_lm(tmp_path_factory.mktemp("modernbert"), "modernbert", extra_rows=7, tokenizer=tokenizer)


def network(folder, tokenizer, **options) -> HFMaskedLM:
    return HFMaskedLM(HFMaskedLMConfig(vocab_size=len(tokenizer), path=str(folder), data_shape=(LENGTH,), **options))


def hf_config(folder, tokenizer, *overrides: str):
    """The shakespeare-char preset with the MLM as its network, validated for token data of the tokenizer."""
    spec = DataSpec(len(tokenizer), (LENGTH,))
    base = ["model.net=hf-mlm", f"net.path={folder}", f"data.seq_len={LENGTH}", "train.precision=fp32"]
    return apply_overrides(load_preset("shakespeare-char"), [*base, *overrides], spec), spec


def token_data(tokenizer) -> ArrayDataset:
    """The text's WordPiece ids, repeated and cut into sequences of LENGTH (train) and 8 held-out sequences."""
    ids = [i for line in TEXT for i in tokenizer(line, add_special_tokens=False).input_ids]
    rows = torch.tensor(ids * 20)[: (len(ids) * 20 // LENGTH) * LENGTH].view(-1, LENGTH)
    return ArrayDataset({"train": rows[:-8], "valid": rows[-8:]}, RawCodec(len(tokenizer)))


@pytest.mark.parametrize("family", ["bert", "modernbert"])
def test_the_mask_id_is_the_mlms_mask_and_the_logits_are_its_own_over_the_real_tokens(family, request, tokenizer):
    folder = request.getfixturevalue(family)
    net, v = network(folder, tokenizer).eval(), len(tokenizer)
    z = torch.randint(0, v, (2, LENGTH))
    z[:, ::3] = v
    as_mlm = torch.where(z == v, tokenizer.mask_token_id, z)
    with torch.no_grad():
        logits, theirs = net(z, torch.rand(2)), net.mlm(input_ids=as_mlm).logits
    assert logits.shape == (2, LENGTH, v) and theirs.shape[-1] == v + (7 if family == "modernbert" else 0)
    kept = [i for i in range(v) if i not in tokenizer.all_special_ids or i == tokenizer.unk_token_id]
    torch.testing.assert_close(logits[..., kept], theirs[..., kept], rtol=0, atol=0)


def test_special_tokens_get_the_lowest_logit_and_unk_stays_data(bert, tokenizer):
    logits = network(bert, tokenizer)(torch.full((1, LENGTH), len(tokenizer)), torch.ones(1))
    lowest = torch.finfo(logits.dtype).min
    for token in ("[PAD]", "[CLS]", "[SEP]", "[MASK]"):
        assert (logits[..., tokenizer.convert_tokens_to_ids(token)] == lowest).all()
    assert (logits[..., tokenizer.unk_token_id] > lowest).all()


def test_time_independent_unless_it_has_a_time_embedding_which_starts_as_the_mlm(bert, tokenizer):
    plain, timed = network(bert, tokenizer).eval(), network(bert, tokenizer, time_embed=True).eval()
    assert plain.capabilities.time_independent and not timed.capabilities.time_independent
    z = torch.full((2, LENGTH), len(tokenizer))
    t = torch.tensor([0.1, 0.9])
    with torch.no_grad():
        torch.testing.assert_close(timed(z, t), plain(z, t), rtol=0, atol=0)  # zero-initialised: the MLM itself
        torch.nn.init.normal_(timed.time_embed.weight)
        early, late = timed(z, t).unbind(0)
    assert not torch.allclose(early, late)


def test_a_build_on_meta_allocates_nothing_and_has_the_real_builds_shapes(modernbert, tokenizer):
    config, spec = hf_config(modernbert, tokenizer)
    with torch.device("meta"):
        meta = network(modernbert, tokenizer)
    assert all(p.device.type == "meta" for p in meta.parameters())
    real = build_model(config, spec)
    shapes = {name: tuple(value.shape) for name, value in real.state_dict().items()}
    assert config.plan().weight_shapes(spec) == shapes
    assert {n: tuple(v.shape) for n, v in meta.state_dict().items()} == {
        n[len("denoiser.") :]: s for n, s in shapes.items() if n.startswith("denoiser.")
    }


@pytest.fixture(scope="module")
def favouring_specials(bert, tokenizer):
    """An MD4 model around the BERT whose output bias makes the MLM itself all but always predict a special token."""
    config, spec = hf_config(bert, tokenizer)
    model = build_model(config, spec).eval()
    with torch.no_grad():
        model.denoiser.mlm.get_output_embeddings().bias[special_ids(tokenizer)] = 50.0
    return model


def special_ids(tokenizer) -> torch.Tensor:
    return torch.tensor(sorted(set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}))


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_every_sampler_draws_no_special_token_and_infilling_keeps_the_given_ones(
    favouring_specials, tokenizer, sampler
):
    special = special_ids(tokenizer)
    out = sample(favouring_specials, 4, steps=8, sampler=sampler, seed=0)
    assert out.tokens.shape == (4, LENGTH) and not torch.isin(out.tokens, special).any()
    template = torch.full((2, LENGTH), len(tokenizer))
    template[:, :5] = torch.tensor(tokenizer("to be, or not to be", add_special_tokens=False).input_ids[:5])
    filled = sample(favouring_specials, init=template, steps=8, sampler=sampler, seed=1).tokens
    assert torch.equal(filled[:, :5], template[:, :5]) and not torch.isin(filled, special).any()


def test_the_time_independent_mlm_is_called_once_per_change_of_z(favouring_specials):
    assert sample(favouring_specials, 1, steps=64, sampler="ancestral", seed=0).nfe <= LENGTH


@pytest.mark.parametrize("kind", ["md4", pytest.param("genmd4", marks=pytest.mark.slow)])
def test_training_through_the_trainer_lowers_the_bound_then_samples(bert, tokenizer, tmp_path, kind):
    config, spec = hf_config(
        bert, tokenizer, f"model.kind={kind}", "train.batch_size=8", "train.lr=3e-3", "train.warmup_steps=1",
        "train.ema_decay=0", "train.eval_batches=2", "train.num_samples=1", "sample.steps=4",
    )  # fmt: skip
    torch.manual_seed(0)
    trainer = Trainer(config, build_model(config, spec), token_data(tokenizer), tmp_path / "run", progress=False)
    try:
        before = trainer.evaluate("valid")["bits_per_token"]  # the same seed: the same times and masks each time
        for _ in range(25):
            trainer.train_step()
        after = trainer.evaluate("valid")["bits_per_token"]
        path = trainer.write_samples()
    finally:
        release(trainer)
    assert after < 0.9 * before and path.exists()


def test_activation_checkpointing_gives_the_same_gradients(bert, tokenizer):
    config, spec = hf_config(bert, tokenizer, "net.pretrained=false")
    model = build_model(config, spec).eval()  # no dropout: the two passes compute the same function
    x = token_data(tokenizer).splits["train"][:4]
    grads = []
    for on in (False, True):
        model.denoiser.checkpointing = on
        model.zero_grad()
        loss, _ = model(x, generator=torch.Generator().manual_seed(0))
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert model.denoiser.checkpointing and model.denoiser.mlm.is_activation_checkpointing
    for plain, recomputed in zip(*grads, strict=True):
        torch.testing.assert_close(recomputed, plain)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp, tok: tmp, "is not a model: it has no transformers config.json"),
        (lambda tmp, tok: _causal_lm(tmp), "holds a 'gpt2' model, which is not a masked LM"),
        (lambda tmp, tok: _shrunk(tmp, tok), "the tokenizer does not belong to these weights"),
    ],
)
def test_bad_folders_get_one_sentence(tmp_path, tokenizer, make, message):
    folder = make(tmp_path, tokenizer)
    with pytest.raises(ConfigError, match=message):
        hf_config(folder, tokenizer)


def test_data_of_another_vocabulary_or_tokenizer_and_no_path_are_refused_with_the_fix(bert, tokenizer):
    with pytest.raises(ConfigError, match=f"set data.tokenizer=hf:{bert}"):
        apply_overrides(load_preset("shakespeare-char"), ["model.net=hf-mlm", f"net.path={bert}"], DataSpec(65, (8,)))
    with pytest.raises(ConfigError, match="but data.tokenizer=bpe:300; leave data.tokenizer out"):
        apply_overrides(
            load_preset("shakespeare-char"), ["model.net=hf-mlm", f"net.path={bert}", "data.tokenizer=bpe:300"]
        )
    with pytest.raises(ConfigError, match="net.path is empty; set it to a masked LM's folder or hub id"):
        apply_overrides(load_preset("shakespeare-char"), ["model.net=hf-mlm"])


def _causal_lm(folder):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_embd=8, n_layer=1, n_head=1, vocab_size=50)).save_pretrained(folder)
    return folder


def _shrunk(folder, tokenizer):
    """A BERT whose embedding table is 10 rows shorter than its tokenizer."""
    from transformers import AutoModelForMaskedLM, BertConfig

    config = BertConfig(vocab_size=len(tokenizer) - 10, hidden_size=8, num_hidden_layers=1, num_attention_heads=1)
    AutoModelForMaskedLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_saved_run_loads_its_own_weights_without_reading_the_mlms(bert, tokenizer, tmp_path):
    """Tied weights (BERT's output layer is its embedding table) are saved as two copies and tied again on
    loading, which builds the MLM from its config alone: the folder's weights may be gone."""
    folder = tmp_path / "mlm"
    shutil.copytree(bert, folder)
    config, spec = hf_config(folder, tokenizer, "train.batch_size=4")
    torch.manual_seed(0)
    trainer = Trainer(config, build_model(config, spec), token_data(tokenizer), tmp_path / "run", progress=False)
    try:
        trainer.train_step()
        trainer.save()
    finally:
        release(trainer)
    (folder / "model.safetensors").unlink()
    loaded = load_run(tmp_path / "run", device="cpu")
    mlm = loaded.model.denoiser.mlm
    assert mlm.get_output_embeddings().weight is mlm.get_input_embeddings().weight
    z = torch.full((1, LENGTH), len(tokenizer))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.logits(z, torch.ones(1)), trainer.ema.module.logits(z, torch.ones(1)))


def test_the_cli_bounds_the_pretrained_mlm_zero_shot_infills_and_exports(
    bert, tmp_path, capsys, monkeypatch, shakespeare_cache
):
    """``train.steps=0`` saves the pretrained weights as the run's checkpoint, so ``md4 eval`` gives the MLM's
    zero-shot bound; the run's codec is the MLM's tokenizer (data.tokenizer defaults to hf:net.path)."""
    from transformers import AutoModelForMaskedLM

    monkeypatch.setenv("MD4_CACHE_DIR", str(shakespeare_cache))
    run_dir = tmp_path / "zero-shot"
    overrides = ["model.net=hf-mlm", f"net.path={bert}", "train.steps=0", *TINY_RUN]
    code, _, err = cli(capsys, "train", "--data", "shakespeare", "--out", run_dir, *overrides)
    assert code == 0, err
    assert json.loads((run_dir / "config.json").read_text())["data"]["tokenizer"] == f"hf:{bert}"
    run = load_run(run_dir, "cpu")
    pretrained = AutoModelForMaskedLM.from_pretrained(bert).state_dict()
    assert all(torch.equal(value, pretrained[name]) for name, value in run.model.denoiser.mlm.state_dict().items())
    code, out, err = cli(capsys, "eval", run_dir, "--max-batches", "1", "--json")
    assert code == 0, err
    bound = json.loads(out)["continuous"]
    assert bound["bits_per_token"] > 0 and bound["bits_per_char"] > 0
    code, out, err = cli(capsys, "sample", run_dir, "--infill", "to be, or ___ to be", "--num", "2", "--steps", "4")
    assert code == 0, err
    assert out.count("to be, or") == 2 and "[MASK]" not in out and "[CLS]" not in out
    code, _, err = cli(capsys, "export", run_dir, tmp_path / "exported")
    assert code == 0, err
    header = json.loads((tmp_path / "exported" / "config.json").read_text())["config"]
    assert header["net"]["path"] == "mlm" and header["data"]["tokenizer"] == "hf:mlm"  # nothing outside the folder
    assert {p.name for p in (tmp_path / "exported" / "mlm").iterdir()} >= {"config.json", "tokenizer.json"}
    moved = shutil.copytree(tmp_path / "exported", tmp_path / "elsewhere" / "exported")
    exported = from_pretrained(moved, "cpu")
    z = torch.full((1, LENGTH), run.spec.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(exported.model.logits(z, torch.ones(1)), run.model.logits(z, torch.ones(1)))
    code, _, err = cli(capsys, "train", "--init", moved, "--out", tmp_path / "tuned", "train.steps=1", "--no-progress")
    assert code == 0, err  # fine-tuning an exported MLM reads its weights from the export alone


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_fine_tune_the_mlm_as_one_does(corpus, tmp_path, tokenizer, parallel):
    """``--nproc 2`` (gloo) replicates or shards (FSDP2: each of the MLM's layers is a unit) the MLM and reaches the
    one-process parameters (no dropout, so the ranks' own random streams do not matter)."""
    folder = save_masked_lm(
        tmp_path / "mlm", tokenizer=tokenizer, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    command = [sys.executable, "-m", "md4", "train", "--data", corpus, "--no-progress"]
    overrides = ["model.net=hf-mlm", f"net.path={folder}", "train.steps=3", *TINY_RUN]
    two = run([*command, "--nproc", "2", "--out", tmp_path / "two", *overrides, f"train.parallel={parallel}"])
    assert two.returncode == 0, two.stderr[-3000:]
    one = run([*command, "--out", tmp_path / "one", *overrides])
    assert one.returncode == 0, one.stderr[-3000:]
    assert_same_parameters(tmp_path / "one", tmp_path / "two")


def test_a_folder_without_weights_is_refused_when_they_are_wanted(bert, tokenizer, tmp_path):
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(bert / name, tmp_path / name)
    config, spec = hf_config(tmp_path, tokenizer)  # the check on the meta device reads no weights
    with pytest.raises(ValueError, match="has no weights to load; set net.pretrained=false"):
        build_model(config, spec)
    assert build_model(hf_config(tmp_path, tokenizer, "net.pretrained=false")[0], spec) is not None
