"""The model card (``README.md``) of an exported model: Hub front matter, the run's numbers, a sample, the recipe,
the commands to reproduce and use it, and the paper's citation."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from md4.config import DEFAULT_PRESET, IMAGE_PRESET, Config, load_preset
from md4.data import ImageCodec
from md4.data.codec import SAMPLE_SEPARATOR
from md4.files import write_atomic
from md4.runs.directory import RunFiles

CITATION = """@inproceedings{shi2024simplified,
  title     = {Simplified and Generalized Masked Diffusion for Discrete Data},
  author    = {Shi, Jiaxin and Han, Kehang and Wang, Zhe and Doucet, Arnaud and Titsias, Michalis K.},
  booktitle = {Advances in Neural Information Processing Systems},
  year      = {2024}
}"""
# md4's recipe names whose data the Hub holds under these dataset ids (for the card's ``datasets``)
HUB_DATASETS = {
    "mnist": "ylecun/mnist",
    "fashion-mnist": "zalando-datasets/fashion_mnist",
    "cifar10": "uoft-cs/cifar10",
    "cifar10-all": "uoft-cs/cifar10",
}
INIT_FILE = "init.json"  # in a run started from trained weights (md4 train --init): where they came from
SAMPLE_CHARACTERS = 800  # of the first text sample shown in the card


@dataclass
class RunExtras:
    """What a run holds besides its weights that the export carries: files to copy (name in the export ->
    path in the run), the last periodic validation bound, and the evaluation report's markdown."""

    files: dict[str, Path] = field(default_factory=dict)
    last_valid: dict[str, Any] | None = None
    report: str | None = None
    sample: str | None = None  # the first text sample, or the image's file name
    init: dict[str, Any] | None = None  # the weights the run was fine-tuned from


def run_extras(run_dir: Path) -> RunExtras:
    """The evaluation report (``md4 eval --suite``), the last periodic validation bound and the newest samples."""
    extras = RunExtras()
    for name in ("eval.json", "eval.md"):
        if (run_dir / name).is_file():
            extras.files[name] = run_dir / name
    if "eval.md" in extras.files:
        extras.report = extras.files["eval.md"].read_text(errors="replace")
    if (run_dir / INIT_FILE).is_file():
        try:
            extras.init = json.loads((run_dir / INIT_FILE).read_text())
        except ValueError:
            extras.init = None
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash
            if isinstance(row, dict) and row.get("split") == "valid" and "bits_per_token" in row:
                extras.last_valid = row
    samples = sorted((run_dir / "samples").glob("step_*.*")) if (run_dir / "samples").is_dir() else []
    if samples:
        newest = samples[-1]
        name = f"sample{newest.suffix}"
        extras.files[name] = newest
        text = newest.read_text(errors="replace") if newest.suffix == ".txt" else None
        extras.sample = name if text is None else text.split(SAMPLE_SEPARATOR)[0].strip()[:SAMPLE_CHARACTERS]
    return extras


def reproduce_overrides(config: Config, images: bool) -> tuple[str, list[str]]:
    """A preset and the ``KEY=VALUE`` overrides that rebuild ``config`` from it: the kind and network first, then
    every other value the preset does not already have."""
    preset = IMAGE_PRESET if images else DEFAULT_PRESET
    base = load_preset(preset).to_dict()
    wanted = config.to_dict()
    overrides = [
        f"model.{key}={wanted['model'][key]}" for key in ("kind", "net") if wanted["model"][key] != base["model"][key]
    ]
    for section, values in wanted.items():
        for key, value in values.items():
            if section == "model" and key in ("kind", "net"):
                continue
            if (section, key) != ("data", "name") and base.get(section, {}).get(key, object()) != value:
                overrides.append(f"{section}.{key}={'none' if value is None else value}")
    return preset, overrides


def _front_matter(header: dict[str, Any], files: RunFiles, license_id: str) -> str:
    images = isinstance(files.codec, ImageCodec)
    name = files.config.data.name
    datasets = (
        [name[3:].split(":")[0]] if name.startswith("hf:") else [HUB_DATASETS[name]] if name in HUB_DATASETS else []
    )
    lines = ["---", "library_name: md4", f"license: {license_id}", "tags:"]
    tags = dict.fromkeys(("md4", "masked-diffusion", "discrete-diffusion", header["kind"], "pytorch"))
    lines += [f"- {tag}" for tag in tags]
    lines.append(f"pipeline_tag: {'unconditional-image-generation' if images else 'text-generation'}")
    if datasets:
        lines += ["datasets:", *(f"- {d}" for d in datasets)]
    return "\n".join([*lines, "---", ""])


def _evaluation(extras: RunExtras, unit: str) -> list[str]:
    if extras.report:  # its headings two levels down, under the card's own
        report = "\n".join(f"##{line}" if line.startswith("#") else line for line in extras.report.strip().splitlines())
        return ["## Evaluation", "", "From `md4 eval RUN --suite` (`eval.json` holds every number):", "", report, ""]
    if extras.last_valid:
        row = extras.last_valid
        return [
            "## Evaluation",
            "",
            (
                f"Validation bound at step {row.get('step')}: **{row['bits_per_token']:.4f} ± "
                f"{row.get('bits_per_token_stderr', float('nan')):.4f} bits/{unit}**"
                + (f" ({row['bits_per_char']:.4f} bits/char)" if "bits_per_char" in row and unit == "token" else "")
                + " (the training run's periodic "
                f"evaluation: {row.get('num_sequences')} sequences, {row.get('draws', 1)} draw each; ± one standard "
                "error). Run `md4 eval RUN --suite` before exporting for the test split, every bound and the "
                "quality measurements."
            ),
            "",
        ]
    return ["## Evaluation", "", "This run holds no evaluation yet: `md4 eval MODEL` measures its bound.", ""]


def _sample(sample: str | None, images: bool) -> list[str]:
    if sample is None:
        return ["(the run wrote no samples)"]
    return [f"![a sample]({sample})"] if images else ["```text", sample, "```"]


def write_model_card(path: Path, header: dict[str, Any], files: RunFiles, extras: RunExtras, parameters: int,
                     license_id: str = "apache-2.0", repo_id: str | None = None) -> None:  # fmt: skip
    """Write the model card of an export (``header``: its ``config.json``) to ``path``."""
    config, spec, codec = files.config, files.spec, files.codec
    images = isinstance(codec, ImageCodec)
    unit = "dim" if images else "token"
    here = f"hf:{repo_id}" if repo_id else "MODEL_FOLDER"
    preset, overrides = reproduce_overrides(config, images)
    checkpoint = header["checkpoint"]
    body = [
        f"# {header['kind']} ({header['network']}) on {config.data.name}",
        "",
        'A masked discrete diffusion model (MD4 / GenMD4: Shi et al., "Simplified and Generalized Masked Diffusion '
        f'for Discrete Data", NeurIPS 2024) trained with md4; objective `{header["kind"]}`, denoiser `{header["network"]}`, {parameters:,} '
        f"parameters; {checkpoint['weights'].upper() if checkpoint['weights'] == 'ema' else 'online (raw)'} weights "
        f"at step {checkpoint['step']:,}. Vocabulary {spec.vocab_size:,} (codec `{codec.to_dict()['type']}`), "
        f"examples of shape {list(spec.data_shape)}"
        + (f", {spec.num_classes} classes" if spec.num_classes else "")
        + "."
        + (f" Fine-tuned from `{extras.init.get('from')}` (step {extras.init.get('step')})." if extras.init else ""),
        "",
        *_evaluation(extras, unit),
        "## Sample",
        "",
        *_sample(extras.sample, images),
        "",
        "## Use",
        "",
        "```bash",
        "pip install md4",
        f"md4 sample {here} --num 4",
        f"md4 eval {here} --data {config.data.name}",
        f"md4 train --init {here} --data YOUR_DATA --out runs/finetuned train.steps=1000",
        "```",
        "",
        "```python",
        "import md4",
        f'pipe = md4.Pipeline.from_pretrained("{here}")',
        "print(pipe.generate(num=2, steps=128))" if not images else "pictures = pipe.generate(num=4, steps=256)",
        "```",
        "",
        "## Training recipe",
        "",
        "```json",
        json.dumps(config.to_dict(), indent=2, sort_keys=True),
        "```",
        "",
        "Reproduce it:",
        "",
        "```bash",
        " ".join(["md4 train", f"--preset {preset}", f"--data {config.data.name}", *overrides]),
        "```",
        "",
        "## Citation",
        "",
        "```bibtex",
        CITATION,
        "```",
        "",
    ]
    write_atomic(path, _front_matter(header, files, license_id) + "\n" + "\n".join(body))
