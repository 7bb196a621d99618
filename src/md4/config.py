"""Typed run configuration, presets and ``section.key=value`` overrides."""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field, fields
from importlib import resources
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A preset, override or config file that cannot be used as given."""


@dataclass
class ModelConfig:
    """The denoiser (see :class:`md4.TransformerConfig`) and the masking schedule."""

    kind: str = "md4"
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 4
    mlp_type: str = "swiglu"
    time_conditioning: str = "adaln_zero"
    outside_embed_dim: int | None = None
    max_positions: int | None = None
    cond_dim: int | None = None
    dropout: float = 0.0
    schedule: str = "linear"
    eps: float = 1e-4


@dataclass
class DataConfig:
    """Which corpus (a recipe name, ``hf:NAME`` or a path) and the sequence length."""

    name: str = "shakespeare"
    seq_len: int = 256


@dataclass
class TrainConfig:
    """Optimisation, precision, run control and periodic outputs."""

    steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    precision: str = "bf16"
    compile: bool = False
    device: str = "auto"
    seed: int = 0
    log_every: int = 10
    eval_every: int = 250
    eval_batches: int = 8
    sample_every: int = 500
    num_samples: int = 2
    sample_steps: int = 256
    checkpoint_every: int = 250
    keep_checkpoints: int = 3


@dataclass
class Config:
    """Everything a run needs; saved as ``config.json`` in the run directory."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        config = cls()
        for section, values in d.items():
            for key, value in values.items():
                _set(config, section, key, value)
        return config

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
PRECISIONS = ("bf16", "fp32")


def _field_type(section: str, key: str) -> Any:
    if section not in SECTIONS:
        raise ConfigError(f"Unknown config section {section!r}; sections are {', '.join(SECTIONS)}.")
    types = {f.name: f.type for f in fields(SECTIONS[section])}
    if key not in types:
        raise ConfigError(f"Unknown config key {section}.{key}; valid keys in [{section}] are: {', '.join(types)}.")
    return types[key]


def _coerce(section: str, key: str, value: Any) -> Any:
    """Convert ``value`` (a TOML value or an override string) to the field's declared type."""
    declared = str(_field_type(section, key))
    optional = "None" in declared
    base = declared.replace(" | None", "")
    if isinstance(value, str) and optional and value.lower() in ("none", "null"):
        return None
    if value is None and optional:
        return None
    try:
        if base == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes", "on"):
                return True
            if str(value).lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if base == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if base == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{section}.{key} must be {base}, got {value!r}.") from None


def _set(config: Config, section: str, key: str, value: Any) -> None:
    setattr(getattr(config, section), key, _coerce(section, key, value))


def parse_override(text: str) -> tuple[str, str, str]:
    """Split ``section.key=value`` (``key=value`` is looked up across sections when unique)."""
    if "=" not in text:
        raise ConfigError(f"Malformed override {text!r}; write it as section.key=value, e.g. train.lr=3e-4.")
    name, value = text.split("=", 1)
    name = name.strip()
    if "." in name:
        section, key = name.split(".", 1)
        _field_type(section, key)
        return section, key, value.strip()
    owners = [s for s, cls in SECTIONS.items() if name in {f.name for f in fields(cls)}]
    if len(owners) != 1:
        raise ConfigError(
            f"Unknown config key {name!r} in override {text!r}; write it as section.key=value "
            f"(sections: {', '.join(SECTIONS)}); `md4 presets` lists every key."
        )
    return owners[0], name, value.strip()


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    for text in overrides:
        section, key, value = parse_override(text)
        _set(config, section, key, value)
    validate(config)
    return config


def validate(config: Config) -> None:
    """Reject impossible settings before any work starts."""
    t, m = config.train, config.model
    if t.precision not in PRECISIONS:
        raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {t.precision!r}.")
    for key in (
        "steps",
        "batch_size",
        "grad_accum",
        "log_every",
        "eval_every",
        "eval_batches",
        "sample_every",
        "sample_steps",
        "checkpoint_every",
        "keep_checkpoints",
    ):
        if getattr(t, key) < 1:
            raise ConfigError(f"train.{key} must be a positive integer, got {getattr(t, key)}.")
    if not 0.0 <= t.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay must be in [0, 1), got {t.ema_decay}.")
    if config.data.seq_len < 1:
        raise ConfigError(f"data.seq_len must be positive, got {config.data.seq_len}.")
    if m.kind != "md4":
        raise ConfigError(f"model.kind {m.kind!r} is not available yet; use md4.")


# ------------------------------------------------------------------ presets
def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("md4.presets").iterdir() if p.name.endswith(".toml"))


def preset_text(name: str) -> str:
    if name not in preset_names():
        raise ConfigError(f"Unknown preset {name!r}; available presets are: {', '.join(preset_names())}.")
    return resources.files("md4.presets").joinpath(f"{name}.toml").read_text()


def load_preset(name: str) -> Config:
    """The named preset (a TOML file of ``[model] [data] [train]`` tables over the defaults)."""
    return Config.from_dict(tomllib.loads(preset_text(name)))


def preset_description(name: str) -> str:
    """The first comment line of the preset file."""
    first = preset_text(name).splitlines()[0]
    return first.lstrip("# ").strip()


def build_config(preset: str, overrides: list[str], data: str | None = None) -> Config:
    config = load_preset(preset)
    if data is not None:
        config.data.name = data
    return apply_overrides(config, overrides)


def resume_config(run_dir, overrides: list[str], data: str | None = None) -> Config:
    """The config saved in a run directory, with overrides (the trainer refuses ones that cannot change)."""
    from pathlib import Path

    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"Nothing to resume: {run_dir} has no config.json; start the run without --resume.")
    config = Config.from_dict(json.loads(path.read_text()))
    if data is not None:
        config.data.name = data
    return apply_overrides(config, overrides)
