"""``md4 data``: list the dataset recipes, or prepare one into the cache."""

from __future__ import annotations

import argparse

from md4.cli.banner import class_counts
from md4.data import canonical_tokenizer, dataset_of, prepare, recipe_descriptions


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "data", help="list or prepare datasets", description="Datasets are cached once, memory-mapped."
    )
    data_sub = p.add_subparsers(dest="action", required=True, metavar="ACTION", help="list or prepare")
    data_sub.add_parser("list", help="the dataset recipes")
    prep = data_sub.add_parser("prepare", help="download/tokenise a dataset into the cache (MD4_CACHE_DIR)")
    prep.add_argument(
        "name", help="a recipe name, hf:NAME[:CONFIG], images:PATH[:HxW], a text file/folder, or a folder of images"
    )
    prep.add_argument("--levels", type=int, help="images: quantise each sub-pixel to this many levels")
    prep.add_argument(
        "--tokenizer", help="text: encode it again with bpe:N (a BPE trained on its train split) or hf:NAME_OR_DIR"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        for name, text in recipe_descriptions().items():
            print(f"{name:20s} {text}")
        return 0
    prepared = prepare(args.name, levels=args.levels, tokenizer=canonical_tokenizer(args.tokenizer))
    dataset = dataset_of(prepared, seq_len=1)
    unit = "tokens" if dataset.data_shape == (1,) else f"examples of {'x'.join(map(str, dataset.data_shape))}"
    sizes = ", ".join(f"{k} {len(v):,}" for k, v in prepared.splits.items())
    classes = f"; {dataset.num_classes} classes" if dataset.num_classes else ""
    counts = class_counts(dataset)
    tokenizer = f" ({args.tokenizer})" if args.tokenizer else ""
    print(f"{prepared.name}{tokenizer}: vocabulary {dataset.vocab_size}{classes}; {unit}: {sizes}")
    if counts:
        print(f"images per class: {counts}")
    return 0
