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

from md4.core.ar import AROptions, Autoregressive
from md4.core.genmd4 import GenMD4, GenMD4Options
from md4.core.md4 import MD4, MD4Options
from md4.nn.hf_mlm import HFMaskedLM, HFMaskedLMConfig
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
    "ar": ModelKind(AROptions, Autoregressive.build),
}
NETWORKS: dict[str, Network] = {
    "transformer": Network(TransformerConfig, Transformer),
    "unet": Network(UNetConfig, UNet),
    "uvit": Network(UViTConfig, UViT),
    "hf-mlm": Network(HFMaskedLMConfig, HFMaskedLM),
}
DATA_FIELDS = ("vocab_size", "num_classes", "data_shape")  # network config fields filled from the data, not [net]
PRETRAINED = "pretrained"  # a [net] key: true reads initial weights from elsewhere (hf-mlm's net.path)
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


@dataclass(frozen=True)
class ModelPlan:
    """The model a config describes, resolved once: the kind's registry entry with its validated options, and the
    network's entry with its ``[net]`` table. Built for a data spec by :meth:`build`; nothing re-reads a name."""

    kind: ModelKind
    options: Any  # the kind's options dataclass, validated on construction
    network: Network
    net: tuple[tuple[str, Any], ...]  # the [net] table, frozen

    def model_spec(self, spec: DataSpec) -> DataSpec:
        """The spec the model sees: the data's classes only when the model is conditional."""
        if self.options.conditional and spec.num_classes is None:
            raise ValueError("model.conditional=true needs labelled data, but this data has no classes.")
        return spec if self.options.conditional else dataclasses.replace(spec, num_classes=None)

    def net_config(self, spec: DataSpec) -> Any:
        """The network's config dataclass for the data the model sees (validated on construction)."""
        data = {"vocab_size": spec.vocab_size, "num_classes": spec.num_classes, "data_shape": tuple(spec.data_shape)}
        fields = {f.name for f in dataclasses.fields(self.network.config)}
        return self.network.config(**dict(self.net), **{k: v for k, v in data.items() if k in fields})

    def build(self, spec: DataSpec) -> nn.Module:
        """The model for data described by ``spec``: kind(options, network(net config))."""
        spec = self.model_spec(spec)
        return self.kind.build(self.options, self.network.build(self.net_config(spec)), spec)

    def without_initial_weights(self) -> ModelPlan:
        """The same model with no pretrained weights read (``[net] pretrained = false``): for loading a checkpoint,
        whose weights replace them."""
        net = dict(self.net)
        if PRETRAINED in net:
            net[PRETRAINED] = False
        return dataclasses.replace(self, net=tuple(net.items()))

    def parameter_count(self, spec: DataSpec) -> int:
        """The parameter count, built on the meta device (no memory, no data)."""
        with torch.device("meta"):
            return sum(p.numel() for p in self.build(spec).parameters())

    def weight_shapes(self, spec: DataSpec) -> dict[str, tuple[int, ...]]:
        """The shape of every tensor of the state dict, built on the meta device (no memory, no data)."""
        with torch.device("meta"):
            return {name: tuple(value.shape) for name, value in self.build(spec).state_dict().items()}


def resolve(model: Mapping[str, Any], net: Mapping[str, Any]) -> ModelPlan:
    """The plan of a ``[model]`` and a ``[net]`` table: registry entries looked up and the kind's options
    validated, once."""
    kind = model_kind(model["kind"])
    options = kind.options(**{k: v for k, v in model.items() if k not in SELECTORS})
    return ModelPlan(kind, options, network(model["net"]), tuple(net.items()))


def build_model(config, spec: DataSpec) -> nn.Module:
    """The model a config describes (its plan, resolved once per config: ``config.plan()``), for data described by
    ``spec``."""
    return config.plan().build(spec)


def count_parameters(config, spec: DataSpec) -> int:
    """The parameter count of the model a config describes, built on the meta device (no memory, no data)."""
    return config.plan().parameter_count(spec)
