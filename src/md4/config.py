"""Run configuration: four tables, presets and ``section.key=value`` overrides, validated whole up front.

- ``[model]``: ``kind`` (the objective, e.g. ``md4``), ``net`` (the denoiser, e.g. ``transformer``) and the
  kind's own options (for md4: ``schedule``, ``eps``); see :mod:`md4.models`.
- ``[net]``: the network's options, straight into its config dataclass (e.g. :class:`md4.TransformerConfig`).
- ``[data]``: which corpus and the sequence length.
- ``[train]``: optimisation, precision, run control and periodic outputs.
- ``[sample]``: how the run samples (:class:`md4.sampling.SampleSettings`): its periodic training samples and
  ``md4 sample RUN`` without flags. A config written before the table existed loads with md4's defaults and its
  ``train.sample_steps`` as ``sample.steps``.

:func:`validate` checks every table, and builds the whole model on the meta device, before any data is read.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from md4 import models
from md4.config_tables import ConfigError, DataConfig, TrainConfig
from md4.data import (
    canonical_name,
    canonical_tokenizer,
    is_image_recipe,
    recipe_image_shape,
    recipe_num_classes,
    recipe_vocab_size,
    tokenizer_vocab_size,
)
from md4.nn.contract import capabilities_of
from md4.notices import warn
from md4.sampling import EVERY_SAMPLER, SAMPLER_NAMES, SampleSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _default_model() -> dict[str, Any]:
    return {"kind": "md4", "net": "transformer", **models.option_defaults(models.model_kind("md4").options)}


def _default_net() -> dict[str, Any]:
    return models.option_defaults(models.network("transformer").config, models.DATA_FIELDS)


@dataclass
class Config:
    """Everything a run needs; saved as ``config.json`` in the run directory."""

    model: dict[str, Any] = field(default_factory=_default_model)
    net: dict[str, Any] = field(default_factory=_default_net)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleSettings = field(default_factory=SampleSettings)
    # False for a config.json written before [sample] existed: ``md4 sample`` then keeps md4's defaults
    sample_recorded: bool = field(default=True, init=False, repr=False, compare=False)
    _plan: tuple[Any, models.ModelPlan] | None = field(default=None, init=False, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": dict(self.model),
            "net": dict(self.net),
            "data": dataclasses.asdict(self.data),
            "train": dataclasses.asdict(self.train),
            "sample": dataclasses.asdict(self.sample),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        config = cls()
        unknown = set(d) - set(SECTIONS)
        if unknown:
            raise ConfigError(f"Unknown config section {min(unknown)!r}; sections are {', '.join(SECTIONS)}.")
        for section, values in d.items():
            if not isinstance(values, dict):
                raise ConfigError(f"[{section}] must be a table of key = value settings, got {values!r}.")
        model = d.get("model", {})
        for key in models.SELECTORS:  # the kind and the network decide which other keys exist
            if key in model:
                _set(config, "model", key, model[key])
        for section, values in d.items():
            for key, value in values.items():
                if not (section == "model" and key in models.SELECTORS):
                    _set(config, section, key, value)
        config.sample_recorded = "sample" in d
        return config

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @property
    def run_sampling(self) -> SampleSettings:
        """A run's ``[sample]`` table, or md4's defaults for a config written before the table (as it sampled then)."""
        return self.sample if self.sample_recorded else SampleSettings()

    def plan(self) -> models.ModelPlan:
        """The model this config describes, resolved once (:func:`md4.models.resolve`): again only after
        ``[model]`` or ``[net]`` changed."""
        key = (tuple(self.model.items()), tuple(self.net.items()))
        if self._plan is None or self._plan[0] != key:
            self._plan = (key, models.resolve(self.model, self.net))
        return self._plan[1]


SECTIONS = ("model", "net", "data", "train", "sample")
RENAMED_KEYS = {("train", "sample_steps"): ("sample", "steps")}  # older md4's names, still read


def section_keys(config: Config, section: str) -> dict[str, str]:
    """The valid keys of a section, with their declared types, for this config's kind and network."""
    if section == "model":
        return models.model_keys(config.model["kind"])
    if section == "net":
        return models.net_keys(config.model["net"])
    if section == "data":
        return models.option_types(DataConfig)
    if section == "train":
        return models.option_types(TrainConfig)
    if section == "sample":
        return models.option_types(SampleSettings)
    raise ConfigError(f"Unknown config section {section!r}; sections are {', '.join(SECTIONS)}.")


def _field_type(config: Config, section: str, key: str) -> str:
    types = section_keys(config, section)
    if key not in types:
        where = {"model": f" for kind {config.model['kind']}", "net": f" for the {config.model['net']} network"}
        raise ConfigError(
            f"Unknown config key {section}.{key}; valid keys in [{section}]{where.get(section, '')} are: "
            f"{', '.join(types)}."
        )
    return types[key]


def _coerce(section: str, key: str, declared: str, value: Any) -> Any:
    """Convert ``value`` (a TOML value or an override string) to the field's declared type."""
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
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base == "str":
            if not isinstance(value, str):
                raise ValueError
            return value
        raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{section}.{key} must be {base}, got {value!r}.") from None


def _reselect(config: Config, key: str, name: str) -> None:
    """Point [model] at another kind or network: its tables become that entry's defaults, shared keys kept."""
    if key == "kind":
        fresh = {"kind": name, "net": config.model["net"], **models.option_defaults(models.model_kind(name).options)}
        config.model = {k: config.model.get(k, v) if k not in models.SELECTORS else v for k, v in fresh.items()}
    else:
        fresh = models.option_defaults(models.network(name).config, models.DATA_FIELDS)
        config.net = {k: config.net.get(k, v) for k, v in fresh.items()}
        config.model["net"] = name


def _set(config: Config, section: str, key: str, value: Any) -> None:
    section, key = RENAMED_KEYS.get((section, key), (section, key))
    value = _coerce(section, key, _field_type(config, section, key), value)
    if section == "model" and key in models.SELECTORS:
        if value != config.model[key]:
            try:
                _reselect(config, key, value)
            except ValueError as err:
                raise ConfigError(str(err)) from None
    elif section in ("model", "net"):
        getattr(config, section)[key] = value
    else:
        setattr(getattr(config, section), key, value)


def parse_override(config: Config, text: str) -> tuple[str, str, str]:
    """Split ``section.key=value`` (``key=value`` is looked up across sections when unique)."""
    if "=" not in text:
        raise ConfigError(f"Malformed override {text!r}; write it as section.key=value, e.g. train.lr=3e-4.")
    name, value = text.split("=", 1)
    name = name.strip()
    if "." in name:
        section, key = RENAMED_KEYS.get(tuple(name.split(".", 1)), name.split(".", 1))
        _field_type(config, section, key)
        return section, key, value.strip()
    owners = [s for s in SECTIONS if name in section_keys(config, s)]
    if len(owners) > 1 and "sample" in owners:  # a bare `steps` stays train.steps, as before [sample] existed
        owners.remove("sample")
    if len(owners) != 1:
        raise ConfigError(
            f"Unknown config key {name!r} in override {text!r}; write it as section.key=value "
            f"(sections: {', '.join(SECTIONS)}); `md4 presets` lists every key."
        )
    return owners[0], name, value.strip()


def apply_overrides(config: Config, overrides: list[str], spec: models.DataSpec | None = None) -> Config:
    """Apply ``section.key=value`` overrides (the kind and network first), then validate the whole config (for the
    data ``spec``, when given: then ``data.name`` is taken as it is, and nothing is looked up from it)."""
    selects = {*models.SELECTORS, *(f"model.{key}" for key in models.SELECTORS)}
    first = [text for text in overrides if text.split("=", 1)[0].strip() in selects]
    seen: dict[tuple[str, str], str] = {}
    for text in first + [text for text in overrides if text not in first]:
        section, key, value = parse_override(config, text)
        if (section, key) in seen and seen[section, key] != value:
            warn(f"{section}.{key} is given twice; the last value, {value}, wins.", stacklevel=2)
        seen[section, key] = value
        _set(config, section, key, value)
    if spec is None:
        config.data.name = canonical_name(config.data.name)  # a file by its resolved path, from any directory
        config.data.tokenizer = canonical_tokenizer(config.data.tokenizer)
        _use_the_mlms_tokenizer(config)
    validate(config, spec)
    return config


def _use_the_mlms_tokenizer(config: Config) -> None:
    """``model.net=hf-mlm``: the masked LM's tokenizer is the run's codec, so ``data.tokenizer`` defaults to
    ``hf:`` the folder (by its resolved path, as ``net.path`` then is too) and may not name another."""
    if config.model["net"] != "hf-mlm" or not config.net.get("path"):
        return
    path = canonical_tokenizer(f"hf:{config.net['path']}")
    config.net["path"] = path.removeprefix("hf:")
    if config.data.tokenizer is None:
        config.data.tokenizer = path
    elif config.data.tokenizer != path:
        raise ConfigError(
            f"net.path's tokenizer is the run's codec with model.net=hf-mlm, but data.tokenizer="
            f"{config.data.tokenizer}; leave data.tokenizer out (it then is {path})."
        )


def data_spec_guess(config: Config) -> models.DataSpec:
    """The data spec as far as the config alone tells it, before any data is read: the vocabulary of
    ``data.tokenizer`` or of the recipe, example shape and classes where the recipe knows them; otherwise a vocabulary of 2, (seq_len,), and, for a
    conditional model of data md4 cannot see yet, 2 classes."""
    name, levels, tokenizer = config.data.name, config.data.levels, config.data.tokenizer
    vocab = tokenizer_vocab_size(tokenizer) if tokenizer else recipe_vocab_size(name, levels) or 2
    shape = recipe_image_shape(name, levels) or (config.data.seq_len,)
    classes = recipe_num_classes(name)
    unknown = recipe_vocab_size(name, levels) is None and not Path(name).exists()
    if classes is None and unknown and config.model.get("conditional"):
        classes = 2
    return models.DataSpec(vocab, tuple(shape), classes)


def validate(config: Config, spec: models.DataSpec | None = None) -> models.ModelPlan:
    """Reject impossible settings before any work starts: every table, then the model built on the meta device
    for the data ``spec`` (default: what the config tells of its data, :func:`data_spec_guess`); return the
    config's resolved :class:`md4.models.ModelPlan`.

    With a ``spec`` (a run directory's own), nothing is looked up from ``data.name``: no file is touched.
    """
    config.train.check()
    try:
        config.sample.check(EVERY_SAMPLER)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    config.data.check(None if spec is not None else is_image_recipe(config.data.name))
    network = models.network(config.model["net"])
    if config.train.activation_checkpointing and not capabilities_of(network.build).checkpointing:
        raise ConfigError(
            f"train.activation_checkpointing is supported by the transformer, not by net {config.model['net']!r}; "
            "leave it off."
        )
    try:
        plan = config.plan()
    except (ValueError, TypeError) as err:
        raise ConfigError(f"Bad [model] setting: {err}") from None
    spec = spec or data_spec_guess(config)
    for section, check in (
        ("net", lambda: plan.net_config(plan.model_spec(spec))),
        ("model", lambda: plan.parameter_count(spec)),
        ("sample", lambda: config.sample.check_kind(lambda: plan.build(spec), config.model["kind"], SAMPLER_NAMES)),
    ):
        try:
            check()
        except (ValueError, TypeError) as err:
            raise ConfigError(f"Bad [{section}] setting: {err}") from None
    return plan


# ------------------------------------------------------------------ presets
def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("md4.presets").iterdir() if p.name.endswith(".toml"))


def preset_text(name: str) -> str:
    if name not in preset_names():
        raise ConfigError(f"Unknown preset {name!r}; available presets are: {', '.join(preset_names())}.")
    return resources.files("md4.presets").joinpath(f"{name}.toml").read_text()


def load_preset(name: str) -> Config:
    """The named preset (a TOML file of ``[model] [net] [data] [train]`` tables over the defaults)."""
    return Config.from_dict(tomllib.loads(preset_text(name)))


def preset_description(name: str) -> str:
    """The first sentence of the preset file's opening comment (it may run over several lines)."""
    words = []
    for line in preset_text(name).splitlines():
        if not line.startswith("#"):
            break
        words.append(line.lstrip("# ").strip())
        if words[-1].endswith("."):
            break
    return " ".join(words)


DEFAULT_PRESET = "shakespeare-char"  # md4 train's
IMAGE_PRESET = "mnist"  # md4 train's for images: a small UNet, built for the shape of whatever images it gets
DEMO_PRESET, DEMO_IMAGE_PRESET = "demo-shakespeare", "demo-mnist"  # md4 demo's: each trains for a time limit


def default_preset(data: str | None) -> str:
    """The preset of ``md4 train`` without ``--preset``: the image demo's for image data, else the text demo's."""
    return IMAGE_PRESET if data is not None and is_image_recipe(data) else DEFAULT_PRESET


def preset_note(preset: str, data: str | None) -> str:
    """What the banner says when ``md4 train`` chose the preset for the data (empty when there is nothing to say)."""
    if preset != IMAGE_PRESET or data is None:
        return ""
    return f"the data are images, so md4 uses the {IMAGE_PRESET} preset's small UNet; --preset chooses another"


def init_config(trained: Config, overrides: list[str], data: str | None = None) -> Config:
    """The config of a run that fine-tunes trained weights (``md4 train --init``): theirs, on ``data`` when
    given, with the overrides, validated whole."""
    config = Config.from_dict(trained.to_dict())
    if data is not None:
        config.data.name = data
    return apply_overrides(config, overrides)


def build_config(preset: str | None, overrides: list[str], data: str | None = None) -> Config:
    """A preset (None: :func:`default_preset` for ``data``) with ``data`` and overrides, validated whole.

    Without a preset, image data get the image preset, class-conditional exactly when the images have classes
    (``model.conditional`` still overrides it).
    """
    chosen = preset or default_preset(data)
    config = load_preset(chosen)
    if data is not None:
        config.data.name = data
    if preset is None and chosen == IMAGE_PRESET and data is not None:
        config.model["conditional"] = recipe_num_classes(data) is not None
    return apply_overrides(config, overrides)
