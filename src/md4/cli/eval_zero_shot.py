"""``md4 eval RUN --zero-shot wikitext2,ptb,...``: zero-shot perplexity of a GPT-2-tokenised run on the corpora of
SEDD (Lou et al. 2024) and MDLM (Sahoo et al. 2024), from the Hugging Face hub or local files
(:mod:`md4.quality.zero_shot`)."""

from __future__ import annotations

import argparse

from md4.cli.options import batch_progress, positive
from md4.quality.zero_shot import LAYOUTS, ZeroShotResult, zero_shot
from md4.quality.zero_shot_corpora import CORPORA, corpora_named


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--zero-shot",
        metavar="LIST",
        help=f"zero-shot perplexity of a GPT-2-tokenised run on these corpora, comma-separated: {','.join(CORPORA)}",
    )
    p.add_argument(
        "--zero-shot-dir",
        metavar="DIR",
        help="read each corpus from DIR/NAME/ (its split's parquet or jsonl files, as on the hub) or DIR/NAME.parquet "
        "or DIR/NAME.jsonl instead of the Hugging Face hub",
    )
    p.add_argument(
        "--zero-shot-layout",
        choices=LAYOUTS,
        default="sedd",
        help="blocks of L tokens as they come (sedd) or L - 2 between <|endoftext|> tokens (mdlm) "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--zero-shot-max-chunks", type=int, metavar="N", help="evaluate only the first N blocks of each corpus"
    )


def run(args: argparse.Namespace, loaded) -> dict:
    """Evaluate the run on each corpus of ``--zero-shot``; print a table unless ``--json``; return the results."""
    positive("--zero-shot-max-chunks", args.zero_shot_max_chunks)
    corpora = corpora_named(args.zero_shot)

    def progress(corpus, batches, count):
        return batch_progress(batches, count, f"zero-shot {corpus.name}", args.no_progress)

    results = zero_shot(
        loaded,
        corpora,
        folder=args.zero_shot_dir,
        layout=args.zero_shot_layout,
        max_chunks=args.zero_shot_max_chunks,
        batch_size=args.batch_size,
        micro_batch=args.micro_batch,
        draws=args.draws,
        seed=args.seed,
        precision=args.precision,
        progress=progress,
    )
    if not args.json:
        print(table(results, args.zero_shot_layout))
    return {"layout": args.zero_shot_layout, "corpora": {r.corpus.name: r.to_dict() for r in results}}


def table(results: list[ZeroShotResult], layout: str) -> str:
    """The results as a plain-text table: corpus, blocks, tokens, perplexity (bound or exact) and bits per token."""
    exact = bool(results) and results[0].exact
    ppl = "ppl" if exact else "ppl <="
    measure = "exact NLL" if exact else "continuous-time bound"
    block = results[0].estimate.tokens_per_sequence if results else 0
    lines = [
        f"zero-shot perplexity ({measure}, {layout} layout, {block} tokens per block)",
        f"{'corpus':<18} {'chunks':>8} {'tokens':>11} {ppl:>12} {'bits/token':>18}",
    ]
    for r in results:
        bits = f"{r.estimate.bits_per_token:.4f} ± {r.estimate.bits_per_token_stderr:.4f}"
        lines.append(
            f"{r.corpus.title:<18} {r.estimate.num_sequences:>8} {r.tokens:>11} {r.estimate.perplexity:>12.3f} {bits:>18}"
        )
    return "\n".join(lines)
