"""``md4 presets``: the presets with a sentence each and every config key, or one preset's TOML."""

from __future__ import annotations

import argparse

from md4.config import Config, data_spec_guess, load_preset, preset_description, preset_names, preset_text
from md4.models import MODEL_KINDS, NETWORKS, count_parameters


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "presets", help="list the presets, or print one", description="Run presets and config keys."
    )
    p.add_argument("name", nargs="?", help="print this preset's TOML and its model's parameter count")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.name:
        config = load_preset(args.name)
        spec = data_spec_guess(config)
        print(preset_text(args.name), end="")
        print(f"\n# parameters: {count_parameters(config, spec):,} (vocabulary {spec.vocab_size})")
        return 0
    for name in preset_names():
        print(f"{name:24s} {preset_description(name)}")
    print(f"\nModel kinds: {', '.join(MODEL_KINDS)}; networks: {', '.join(NETWORKS)}.")
    print("Every key of the default kind and network (override with section.key=value):")
    for section, values in Config().to_dict().items():
        print(f"  [{section}] " + ", ".join(f"{k}={v}" for k, v in values.items()))
    return 0
