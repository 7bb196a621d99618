"""The model factory: registries of kinds and networks, config tables validated whole before any data is read."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import md4.data
from md4 import MD4, TransformerConfig, models
from md4.cli import main
from md4.config import Config, ConfigError, build_config, data_spec_guess
from md4.models import DataSpec, build_model, count_parameters
from md4.nn.contract import DenoiserCapabilities


@pytest.mark.parametrize(
    "preset, release, count",
    [
        ("text8", TransformerConfig.release_text8(), 88_734_272),
        ("owt-gpt2-small", TransformerConfig.release_openwebtext(), 165_857_344),
    ],
)
def test_paper_presets_build_the_release_networks_exactly(preset, release, count):
    """The preset's [net] is the release network field for field, with the release's parameter count."""
    config = build_config(preset, [])
    spec = data_spec_guess(config)
    assert spec.vocab_size == release.vocab_size
    built = config.plan().net_config(spec)
    assert dataclasses.replace(built, data_shape=None) == release  # the data field aside, field for field
    assert count_parameters(config, spec) == count
    with torch.device("meta"):
        model = build_model(config, spec)
    shapes = {name: tuple(p.shape) for name, p in model.denoiser.named_parameters()}
    assert shapes["blocks.0.modulation.1.weight"] == (6 * 768, 64) and shapes["blocks.0.modulation.1.bias"] == (
        6 * 768,
    )
    assert shapes["time_mlp.0.weight"] == (256, 64) and shapes["time_mlp.2.weight"] == (64, 256)


def test_paper_presets_use_the_release_recipe():
    for preset in ("text8", "owt-gpt2-small"):
        t = build_config(preset, []).train
        assert (t.grad_clip, t.weight_decay, t.weight_decay_scope) == (0.0, 0.03, "all")
        lr = 5e-4 if preset == "text8" else 3e-4  # each the release's sweep value
        assert (t.lr, t.warmup_steps, t.min_lr_ratio, t.ema_decay, t.batch_size) == (lr, 2000, 0.0, 0.9999, 512)


def test_presets_command_prints_the_parameter_count(capsys):
    assert main(["presets", "text8"]) == 0
    assert "# parameters: 88,734,272 (vocabulary 27)" in capsys.readouterr().out
    assert main(["presets", "owt-gpt2-small"]) == 0
    assert "# parameters: 165,857,344 (vocabulary 50257)" in capsys.readouterr().out
    assert main(["presets", "shakespeare-char"]) == 0
    assert "# parameters: 2,846,400 (vocabulary 84)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "override, message",
    [
        ("net.dimm=3", "Unknown config key net.dimm; valid keys in [net] for the transformer network are: dim,"),
        ("model.schedul=cosine", "Unknown config key model.schedul; valid keys in [model] for kind md4 are:"),
        ("model.kind=sedd", "Unknown model.kind 'sedd'; registered ones are: md4, genmd4, ar."),
        ("model.net=resnet", "Unknown model.net 'resnet'; registered ones are: transformer, unet, uvit, hf-mlm."),
        (
            "model.net=unet",
            "Bad [net] setting: The unet network needs images of shape (H, W, C), got data_shape=(1024,)",
        ),
        ("model.conditional=true", "model.conditional=true needs labelled data, but this data has no classes."),
        ("net.mlp_type=relu", "Bad [net] setting: Unknown mlp_type 'relu'"),
        ("net.n_heads=5", "Bad [net] setting: dim=768 is not divisible by n_heads=5"),
        ("net.vocab_size=9", "Unknown config key net.vocab_size"),
        ("model.schedule=sigmoid", "Bad [model] setting: Unknown masking schedule 'sigmoid'"),
        ("model.eps=0", "Bad [model] setting: The schedule's eps must be in (0, 0.5)"),
        ("net.dim=big", "net.dim must be int, got 'big'"),
        ("train.grad_clip=-1", "train.grad_clip must be >= 0"),
        ("train.weight_decay_scope=some", "train.weight_decay_scope must be one of matrices, all"),
    ],
)
def test_any_bad_key_or_value_fails_before_data_is_prepared(override, message, capsys, monkeypatch, tmp_path):
    """The OpenWebText preset would download the corpus first; every section is checked before that."""

    def no_data(*args, **kwargs):
        raise AssertionError("data was prepared before the config was checked")

    monkeypatch.setattr(md4.data, "prepare", no_data)
    code = main(["train", "--preset", "owt-gpt2-small", "--out", str(tmp_path / "run"), override])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("md4: error: ") and message in err[-1], err
    assert not (tmp_path / "run").exists()


def test_overrides_order_kind_and_net_first_and_bare_keys_resolve():
    config = build_config("shakespeare-char", ["n_layers=2", "schedule=cosine", "model.net=transformer"])
    assert config.net["n_layers"] == 2 and config.model["schedule"] == "cosine"
    assert Config.from_dict(config.to_dict()).to_dict() == config.to_dict()


@dataclass
class MLPConfig:
    """A toy denoiser registered in a test: one embedding, one hidden layer, no time input."""

    vocab_size: int
    num_classes: int | None = None
    hidden: int = 32
    dropout: float = 0.0

    def __post_init__(self):
        if self.hidden < 1:
            raise ValueError(f"hidden must be positive, got {self.hidden}.")


class MLPDenoiser(nn.Module):
    capabilities = DenoiserCapabilities(time_independent=True)

    def __init__(self, config: MLPConfig):
        super().__init__()
        self.embed = nn.Embedding(config.vocab_size + 1, config.hidden)
        self.out = nn.Linear(config.hidden, config.vocab_size)

    def forward(self, z, t, labels=None):
        return self.out(torch.relu(self.embed(z)))


def test_a_new_network_is_one_module_and_one_registry_line(monkeypatch):
    monkeypatch.setitem(models.NETWORKS, "mlp", models.Network(MLPConfig, MLPDenoiser))
    config = build_config("shakespeare-char", ["net.hidden=16", "model.net=mlp", "net.dropout=0.1"])
    assert config.model["net"] == "mlp"
    assert config.net == {"hidden": 16, "dropout": 0.1}  # the transformer's keys are gone, shared ones kept
    model = build_model(config, DataSpec(vocab_size=5, data_shape=(7,)))
    assert isinstance(model, MD4) and isinstance(model.denoiser, MLPDenoiser)
    loss, _ = model.loss(torch.randint(0, 5, (3, 7)))
    assert torch.isfinite(loss)
    with pytest.raises(ConfigError, match="Bad \\[net\\] setting: hidden must be positive"):
        build_config("shakespeare-char", ["model.net=mlp", "net.hidden=0"])
    with pytest.raises(ConfigError, match="Unknown config key net.dim"):
        build_config("shakespeare-char", ["model.net=mlp", "net.dim=8"])


def test_build_model_fills_the_data_fields_and_the_schedule():
    overrides = ["model.schedule=poly2", "model.eps=0.001", "model.conditional=true", "data.name=in-memory"]
    config = build_config("shakespeare-char", overrides)
    model = build_model(config, DataSpec(vocab_size=11, data_shape=(4, 4), num_classes=3))
    assert model.vocab_size == 11 and model.data_shape == (4, 4)
    assert model.denoiser.config.num_classes == 3 and model.denoiser.config.vocab_size == 11
    assert model.schedule.name == "poly2" and model.schedule.eps == 0.001
