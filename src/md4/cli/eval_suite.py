"""``md4 eval RUN --suite``: every measurement that applies to the run (the bounds; generative perplexity and entropy
of text samples; zero-shot perplexity of a GPT-2-tokenised run; FID and KID of image samples and the class
accuracy of a class-conditional run's), written into the run
as ``eval.json`` and ``eval.md`` (:mod:`md4.quality.report`) and printed."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from md4.core.kind_contract import ModelKindContract
from md4.data import ImageCodec
from md4.data.tokenizers import GPT2Tokenizer
from md4.quality.report import markdown, write_report
from md4.quality.zero_shot_corpora import CORPORA

# What the suite measures where no flag says otherwise: the masked samplers side by side, and enough images for a
# FID that ranks runs on a CPU (papers use 50,000; --fid N sets it)
SUITE_SAMPLERS = ("ancestral", "top_p", "exact")
SUITE_FID_SAMPLES = 1000
SUITE_CLASS_SAMPLES = 10  # of each class, for the class accuracy of a class-conditional image run


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--suite",
        action="store_true",
        help="every measurement that applies (bounds, generative perplexity, zero-shot, FID), written into the run "
        "as eval.json and eval.md; the options of each measurement still apply",
    )


def select(args: argparse.Namespace, loaded) -> dict[str, str]:
    """Switch on the measurements that apply to the run, keeping what the flags chose; the others' reasons."""
    args.bounds = True
    skipped = {}
    image = isinstance(loaded.codec, ImageCodec)
    if image:
        skipped["generative perplexity"] = "an image run; FID and KID measure its samples"
        args.fid = args.fid or SUITE_FID_SAMPLES
        if loaded.model.num_classes is None:
            skipped["class accuracy"] = "an unconditional run; its samples have no class to check"
        else:
            args.class_accuracy = args.class_accuracy or SUITE_CLASS_SAMPLES
    else:
        args.gen_ppl = True
        declared = loaded.model.samplers if isinstance(loaded.model, ModelKindContract) else None
        args.sampler = args.sampler or ",".join(declared or SUITE_SAMPLERS)
        skipped["FID and KID"] = "a text run; generative perplexity measures its samples"
        skipped["class accuracy"] = "a text run; it has no image classes"
    if isinstance(loaded.codec, GPT2Tokenizer):
        args.zero_shot = args.zero_shot or ",".join(CORPORA)
    else:
        skipped["zero-shot perplexity"] = "the corpora are GPT-2 tokenised, and this run is not"
    return skipped


def attempt(skipped: dict[str, str], name: str, measure: Callable[..., Any], *args: Any) -> Any:
    """``measure(*args)``, or None with its one-sentence error kept in ``skipped`` (data that cannot be had offline, a
    scorer or feature network that is not installed), so that one missing piece does not lose the rest."""
    try:
        return measure(*args)
    except ValueError as err:  # md4's bad-input errors; anything else is a bug and propagates
        skipped[name] = str(err)
        return None


def finish(args: argparse.Namespace, loaded, results: dict[str, Any], skipped: dict[str, str]) -> None:
    """Write the report into the run (or exported folder) and print where (and the markdown unless ``--json``)."""
    if skipped:
        results["not_measured"] = skipped
    json_path, markdown_path = write_report(loaded.output_dir(), results)
    if not args.json:
        print(f"\n{markdown(results)}\nmd4 eval: wrote {json_path} and {markdown_path}")
