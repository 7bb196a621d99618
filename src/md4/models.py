"""The registries of model kinds and denoiser networks, and the one factory that builds a model from them.

A config names a model kind (``[model] kind``: the objective around the denoiser) and a network
(``[model] net``: the denoiser). The kind's options are the other keys of ``[model]`` and go into the
kind's options dataclass; the network's options are the keys of ``[net]`` and go into the network's own
config dataclass, whose data-dependent fields (:data:`DATA_FIELDS`) are filled from the data.

Adding a kind or a network is one new module plus one line here:

- a kind module defines an options dataclass (validated in ``__post_init__``) and a model class with
  ``build(options, denoiser, spec)``; register it in :data:`MODEL_KINDS`;
- a network module defines a config dataclass (with ``vocab_size``, and ``num_classes`` and ``data_shape`` if
  it uses them) and a module built from it, ``Net(config)``, following the denoiser contract
  ``net(z [B, *shape], t [B], labels=None) -> logits [B, *shape, V]``; register it in :data:`NETWORKS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from md4.core.genmd4 import GenMD4, GenMD4Options
from md4.core.md4 import MD4, MD4Options
from md4.nn.transformer import Transformer, TransformerConfig
from md4.nn.unet import UNet, UNetConfig
from md4.nn.uvit import UViT, UViTConfig


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know of its data: the vocabulary, one example's shape and the classes."""

    vocab_size: int
    data_shape: tuple[int, ...]
    num_classes: int | None = None

    @classmethod
    def of(cls, dataset) -> DataSpec:
        """The spec of a :class:`md4.data.Dataset`."""
        return cls(dataset.vocab_size, tuple(dataset.data_shape), dataset.num_classes)


@dataclass(frozen=True)
class ModelKind:
    """A model kind: its ``[model]`` options dataclass and ``build(options, denoiser, spec) -> nn.Module``."""

    options: type
    build: Callable[[Any, nn.Module, DataSpec], nn.Module]


@dataclass(frozen=True)
class Network:
    """A denoiser network: its config dataclass (the ``[net]`` keys) and the module built from one."""

    config: type
    build: Callable[[Any], nn.Module]


MODEL_KINDS: dict[str, ModelKind] = {
    "md4": ModelKind(MD4Options, MD4.build),
    "genmd4": ModelKind(GenMD4Options, GenMD4.build),
}
NETWORKS: dict[str, Network] = {
    "transformer": Network(TransformerConfig, Transformer),
    "unet": Network(UNetConfig, UNet),
    "uvit": Network(UViTConfig, UViT),
}
DATA_FIELDS = ("vocab_size", "num_classes", "data_shape")  # network config fields filled from the data, not [net]
SELECTORS = ("kind", "net")  # the [model] keys that pick the registry entries


def _lookup(registry: Mapping[str, Any], name: str, what: str) -> Any:
    if name not in registry:
        raise ValueError(f"Unknown {what} {name!r}; registered ones are: {', '.join(registry)}.")
    return registry[name]


def model_kind(name: str) -> ModelKind:
    return _lookup(MODEL_KINDS, name, "model.kind")


def network(name: str) -> Network:
    return _lookup(NETWORKS, name, "model.net")


def option_types(cls: type, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """Field name -> declared type (as written, e.g. ``"int | None"``) of an options dataclass."""
    return {f.name: str(f.type) for f in dataclasses.fields(cls) if f.name not in exclude}


def option_defaults(cls: type, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Field name -> default of an options dataclass (fields without a default are skipped)."""
    return {
        f.name: f.default
        for f in dataclasses.fields(cls)
        if f.name not in exclude and f.default is not dataclasses.MISSING
    }


def model_keys(kind: str) -> dict[str, str]:
    """The keys of ``[model]`` for a kind, with their types."""
    return {"kind": "str", "net": "str", **option_types(model_kind(kind).options)}


def net_keys(net: str) -> dict[str, str]:
    """The keys of ``[net]`` for a network, with their types."""
    return option_types(network(net).config, DATA_FIELDS)


def model_options(model: Mapping[str, Any]) -> Any:
    """The kind's options dataclass built from a ``[model]`` table (validated on construction)."""
    kind = model_kind(model["kind"])
    return kind.options(**{k: v for k, v in model.items() if k not in SELECTORS})


def net_config(model: Mapping[str, Any], net: Mapping[str, Any], spec: DataSpec) -> Any:
    """The network's config dataclass built from a ``[net]`` table and the data (validated on construction)."""
    entry = network(model["net"])
    data = {"vocab_size": spec.vocab_size, "num_classes": spec.num_classes, "data_shape": tuple(spec.data_shape)}
    fields = {f.name for f in dataclasses.fields(entry.config)}
    return entry.config(**net, **{k: v for k, v in data.items() if k in fields})


def model_spec(options: Any, spec: DataSpec) -> DataSpec:
    """The spec the model sees: the data's classes only when the model is conditional."""
    if options.conditional and spec.num_classes is None:
        raise ValueError("model.conditional=true needs labelled data, but this data has no classes.")
    return spec if options.conditional else dataclasses.replace(spec, num_classes=None)


def build_model(config, spec: DataSpec) -> nn.Module:
    """The model a config describes, for data described by ``spec``: kind(options, network(net config))."""
    options = model_options(config.model)
    spec = model_spec(options, spec)
    denoiser = network(config.model["net"]).build(net_config(config.model, config.net, spec))
    return model_kind(config.model["kind"]).build(options, denoiser, spec)


def count_parameters(config, spec: DataSpec) -> int:
    """The parameter count of the model a config describes, built on the meta device (no memory, no data)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(config, spec).parameters())
