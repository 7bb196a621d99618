"""The evaluation report of a run (``md4 eval RUN --suite``): what ``md4 eval --json`` returns, as ``eval.json``, and
the same results as markdown tables in ``eval.md``: the bounds with their standard errors, generative perplexity and
entropy per sampler and NFE, zero-shot perplexity, FID and KID, and the measurements that did not apply or could not
be made, each with its reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from md4.files import write_atomic

REPORT_JSON, REPORT_MARKDOWN = "eval.json", "eval.md"
BOUND_NAMES = {"continuous": "continuous-time NELBO", "discrete": "discrete-time NELBO", "exact": "exact NLL"}


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
    ]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def bounds_section(results: dict[str, Any]) -> list[str]:
    """The likelihood bounds (or exact NLL) on held-out data, in bits per unit with standard errors."""
    unit = results.get("unit", "token")
    rows = []
    for name, label in BOUND_NAMES.items():
        est = results.get(name)
        if est is None:
            continue
        steps = f", T = {est['num_steps']}" if est.get("num_steps") else ""
        rows.append(
            [
                label + steps,
                f"{est['bits_per_token']:.4f} ± {est['bits_per_token_stderr']:.4f}",
                f"{'' if name == 'exact' else '≤ '}{est['perplexity']:.3f}",
                f"{est['num_sequences']} × {est['tokens_per_sequence']}",
                str(est["draws"]),
            ]
        )
    if not rows:
        return []
    return [
        f"## Likelihood on {results.get('data', results.get('split', 'held-out data'))}",
        "",
        *_table(["bound", f"bits/{unit}", "perplexity", "sequences × tokens", "draws"], rows),
        "",
    ]


def gen_ppl_section(report: dict[str, Any]) -> list[str]:
    """Generative perplexity and unigram entropy of samples per sampler, steps and categorical draw, with NFE."""
    rows = []
    for row in [*report["rows"], {**report["reference"], "sampler": f"held-out text ({report['reference']['split']})"}]:
        rows.append(
            [
                row["sampler"],
                "" if row.get("steps") is None else str(row["steps"]),
                row.get("categorical") or "",
                "" if row.get("nfe") is None else f"{row['nfe']:.0f}",
                f"{row['gen_ppl']:.3f}",
                f"{row['nll_per_token']:.4f} ± {row['nll_per_token_stderr']:.4f}",
                f"{row['entropy_bits']:.3f}",
            ]
        )
    return [
        f"## Generative perplexity under {report['scorer']}",
        "",
        (
            f"{report['samples']} samples of {report['length']} tokens per setting, {report['grid']} grid, network "
            f"in {report['sample_precision']}, seed {report['seed']}; entropy: mean unigram entropy of a sample in bits."
        ),
        "",
        *_table(["sampler", "steps", "categorical", "NFE", "gen ppl", "NLL/token (nats)", "entropy"], rows),
        "",
    ]


def zero_shot_section(report: dict[str, Any]) -> list[str]:
    """Zero-shot perplexity on each corpus (an upper bound, or exact for an autoregressive run)."""
    rows = [
        [
            r["corpus"],
            str(r["chunks"]),
            str(r["tokens"]),
            f"{'' if r['bound'] == 'exact' else '≤ '}{r['perplexity']:.3f}",
            f"{r['bits_per_token']:.4f} ± {r['bits_per_token_stderr']:.4f}",
        ]
        for r in report["corpora"].values()
    ]
    return [
        f"## Zero-shot perplexity ({report['layout']} layout)",
        "",
        *_table(["corpus", "blocks", "tokens", "perplexity", "bits/token"], rows),
        "",
    ]


def fid_section(report: dict[str, Any]) -> list[str]:
    """FID and KID of image samples against a split's images."""
    kid = report["kid"]
    row = [
        report["features"],
        f"{report['samples']} ({report['sampler']}, NFE {report['nfe']})",
        f"{report['references']} ({report['split']})",
        f"{report['fid']:.4g}",
        f"{kid['mean']:.4g} ± {kid['std']:.2g}",
    ]
    caveat = [] if report["published"] else ["", f"{report['features']} features: not comparable with published FID."]
    return [
        "## Image sample quality",
        "",
        *_table(["features", "samples", "references", "FID", "KID"], [row]),
        *caveat,
        "",
    ]


def class_accuracy_section(report: dict[str, Any]) -> list[str]:
    """How many samples of each class a classifier of the run's images names as their class."""
    row = [f"{report['per_class']} (guidance {report['guidance']:g}, NFE {report['nfe']})"]
    row += [str(count) for count in report["named"]] + [f"{report['accuracy']:.3f}"]
    classes = [str(label) for label in range(len(report["named"]))]
    return [
        "## Class accuracy",
        "",
        *_table(["samples of each class", *classes, "accuracy"], [row]),
        "",
        (
            "The judge, a small classifier trained on the run's training images, names "
            f"{report['judge_test_accuracy']:.1%} of its test images right."
        ),
        "",
    ]


SECTIONS = {
    "gen_ppl": gen_ppl_section,
    "zero_shot": zero_shot_section,
    "fid": fid_section,
    "class_accuracy": class_accuracy_section,
}


def markdown(results: dict[str, Any]) -> str:
    """The report of ``results`` (what ``md4 eval --json`` prints, with ``not_measured``: reasons by name)."""
    lines = [f"# Evaluation of {results['run']}", "", f"Step {results['step']}, {results['weights']} weights.", ""]
    lines += bounds_section(results)
    for name, section in SECTIONS.items():
        if name in results:
            lines += section(results[name])
    skipped = results.get("not_measured", {})
    if skipped:
        lines += ["## Not measured", ""] + [f"- {name}: {reason}" for name, reason in skipped.items()] + [""]
    return "\n".join(lines)


def write_report(run_dir: str | Path, results: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``eval.json`` and ``eval.md`` into the run directory (atomically) and return their paths."""
    json_path, markdown_path = Path(run_dir) / REPORT_JSON, Path(run_dir) / REPORT_MARKDOWN
    write_atomic(json_path, json.dumps(results, indent=2) + "\n")
    write_atomic(markdown_path, markdown(results) + "\n")
    return json_path, markdown_path
