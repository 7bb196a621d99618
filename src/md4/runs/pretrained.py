"""Exported models: the folder ``md4 export`` writes, and loading it (or a run, or a Hub repository) back.

An exported folder is a standard model folder, the same on disk and on the Hugging Face Hub:

- ``config.json``: ``library`` (``"md4"``), ``export_format``, the md4 version, the run's whole config (``config``:
  the kind, the network and their options, data, training, sampling), its data description (``data``: the codec,
  one example's shape, the classes, where the data came from) and the checkpoint it holds (``checkpoint``);
- ``model.safetensors``: the weights (the EMA by default, as md4 samples and evaluates);
- ``tokenizer.json`` for a codec that is a Hugging Face tokenizer; ``README.md``, the model card
  (:mod:`md4.runs.model_card`), and the run's ``eval.json``/``eval.md`` and last samples when it has them.

Everything md4 reads from it is checked as a run directory's files are (:mod:`md4.runs.directory`): an edited or
crafted folder is refused in one sentence before a model is built.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from md4.data import Codec
from md4.device import resolve_device
from md4.files import atomic_output, write_atomic
from md4.runs.checkpoints import CheckpointError, find_checkpoint, read_checkpoint
from md4.runs.directory import (
    LoadedRun,
    RunError,
    RunFiles,
    check_finite,
    check_links,
    check_weights_fit,
    checked_files,
    is_run,
    load_run,
    read_object,
    read_run_files,
)
from md4.runs.hub_repo import HUB_PREFIX, download
from md4.runs.mlm_files import copy_mlm_description, locate_mlm_description
from md4.runs.model_card import INIT_FILE, run_extras, write_model_card

LIBRARY = "md4"
EXPORT_FORMAT = 1  # the layout of an exported folder; another md4 that writes a new one raises it
CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE = "config.json", "model.safetensors", "tokenizer.json"
RUN_PARTS = ("data.json", "checkpoints", "tokenizer.json")  # what only a run directory (or md4 0.1's) holds


@dataclass
class Pretrained:
    """Trained weights with what describes them, before they are put into a model: from an exported folder, a
    run directory or a Hub repository."""

    files: RunFiles
    weights: dict[str, torch.Tensor]
    step: int
    path: Path  # the weights file
    folder: Path  # the exported folder or run directory
    origin: str  # what the user named: a folder, a run, or hf:REPO_ID

    def start(self, model: torch.nn.Module, codec: Codec) -> None:
        """Put these weights into ``model``, a new run's before it trains (fine-tuning), for data that ``codec``
        tokenises: it must be the codec they were trained with, or every token id would mean something else."""
        own = self.files.codec
        if codec.to_dict() != own.to_dict():
            raise RunError(
                f"{self.origin} was trained on data tokenised by {_codec_name(own)}, and this data is tokenised by "
                f"{_codec_name(codec)}; fine-tune it on text its own tokenizer encodes (the same data recipe, or "
                "data.tokenizer as it was set)."
            )
        shapes = {name: tuple(value.shape) for name, value in model.state_dict().items()}
        found = {name: tuple(value.shape) for name, value in self.weights.items()}
        if shapes != found:
            name = (sorted(set(shapes) ^ set(found)) or sorted(n for n in shapes if shapes[n] != found[n]))[0]
            raise RunError(
                f"The weights of {self.origin} do not fit the model this config describes ({name}: "
                f"{found.get(name, 'absent')} in the weights, {shapes.get(name, 'absent')} in the model); leave "
                "[model] and [net] as they are there (drop --preset and the model. and net. overrides)."
            )
        model.load_state_dict(self.weights)

    def record(self, run_dir: Path) -> None:
        """Write ``init.json`` into the new run: which weights it started from (its model card cites them)."""
        write_atomic(run_dir / INIT_FILE, json.dumps({"from": self.origin, "step": self.step}, indent=2) + "\n")

    def model(self, device: str = "auto") -> torch.nn.Module:
        """The model these weights belong to, in eval mode on ``device``."""
        model = self.files.config.plan().without_initial_weights().build(self.files.spec)
        model.load_state_dict(self.weights)
        return model.to(resolve_device(device)).eval()

    def loaded(self, device: str = "auto") -> LoadedRun:
        """As a :class:`LoadedRun`, which ``md4 sample`` and ``md4 eval`` take."""
        files = self.files
        return LoadedRun(
            files.config, files.codec, files.spec, files.source, self.model(device), self.step, self.path, self.folder
        )


def _codec_name(codec: Codec) -> str:
    return f"a {codec.to_dict()['type']} codec of {codec.vocab_size:,} tokens"


def is_export(folder: Path) -> bool:
    """Whether ``folder`` holds what ``md4 export`` writes (its ``config.json`` names md4)."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        return False
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(value, dict) and value.get("library") == LIBRARY


def _check_fits(files: RunFiles, weights: Path) -> None:
    """Refuse weights whose tensors (the safetensors header alone) are not the model ``files`` describe."""
    try:
        check_weights_fit(files.config, files.spec, weights, "its config.json describes", "export the run again.")
    except CheckpointError:
        raise RunError(f"{weights} is not a readable safetensors file; export the run again.") from None


def read_export(folder: Path, origin: str | None = None) -> Pretrained:
    """The weights and description of an exported folder, every part checked before a model is built."""
    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file():
        raise RunError(
            f"{folder} is not an md4 model (no config.json); pass a folder written by `md4 export`, an md4 run "
            f"directory or {HUB_PREFIX}REPO_ID."
        )
    check_links(folder)
    header = read_object(folder / CONFIG_FILE)
    if header.get("library") != LIBRARY:
        raise RunError(
            f"{folder / CONFIG_FILE} is not md4's (it names no library md4: a model of another library?); pass a "
            "folder written by `md4 export`."
        )
    if header.get("export_format") != EXPORT_FORMAT:
        raise RunError(
            f"{folder} was exported by md4 {header.get('md4_version', '(unknown version)')} in format "
            f"{header.get('export_format')!r}, and this md4 reads format {EXPORT_FORMAT}; load it with that md4 "
            "version, or export the run again with this one."
        )
    config, data, checkpoint = header.get("config"), header.get("data"), header.get("checkpoint")
    if not (isinstance(config, dict) and isinstance(data, dict) and isinstance(checkpoint, dict)):
        raise RunError(f"{folder / CONFIG_FILE} lacks its config, data or checkpoint table; export the run again.")
    files = checked_files(locate_mlm_description(config, folder), data, folder, CONFIG_FILE, CONFIG_FILE)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise RunError(f"{folder} has no {WEIGHTS_FILE}; export the run again or download the whole repository.")
    _check_fits(files, weights)
    try:
        state = load_file(weights)
    except (SafetensorError, OSError) as err:
        raise RunError(f"{weights} is damaged ({err}); export the run again.") from None
    check_finite(state, weights)
    step = checkpoint.get("step")
    step = step if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else 0
    return Pretrained(files, state, step, weights, folder, origin or str(folder))


def _is_run_like(folder: Path) -> bool:
    """Whether ``folder`` is a run directory, or a damaged one (whose errors the run's reader says best)."""
    return (
        folder.is_dir() and not is_export(folder) and (is_run(folder) or any((folder / n).exists() for n in RUN_PARTS))
    )


def read_pretrained(source: str | os.PathLike[str], use_ema: bool = True, step: int | None = None) -> Pretrained:
    """Weights from an exported folder, an md4 run directory (its newest checkpoint, or ``step``'s) or a Hugging
    Face Hub repository (``hf:REPO_ID``, downloaded into the Hub's cache once)."""
    text = str(source)
    if text.startswith(HUB_PREFIX):
        return read_export(download(text[len(HUB_PREFIX) :]), text)
    folder = Path(text).expanduser()
    if not folder.is_dir():
        raise RunError(
            f"{folder} is not an md4 run directory nor an exported model (no such folder); pass the --out of md4 "
            f"train, a folder written by `md4 export`, or {HUB_PREFIX}REPO_ID."
        )
    if _is_run_like(folder):
        return _read_run_weights(folder, use_ema, step)  # a run, or a damaged one: its own sentences
    return read_export(folder)


def _read_run_weights(run_dir: Path, use_ema: bool, step: int | None) -> Pretrained:
    files = read_run_files(run_dir)
    ckpt = read_checkpoint(run_dir, step, weights_only=True)
    weights = ckpt.ema if use_ema else ckpt.model
    check_finite(weights, ckpt.path)
    return Pretrained(files, weights, ckpt.state["step"], ckpt.path, run_dir, str(run_dir))


def from_pretrained(
    source: str | os.PathLike[str], device: str = "auto", use_ema: bool = True, step: int | None = None
) -> LoadedRun:
    """The model of an exported folder, an md4 run directory (its EMA weights, or the online ones without
    ``use_ema``; its newest checkpoint, or ``step``'s) or ``hf:REPO_ID``, with its codec, ready to sample and
    evaluate (``.model``, ``.codec``, ``.config``)."""
    text = str(source)
    folder = Path(text).expanduser()
    if not text.startswith(HUB_PREFIX) and _is_run_like(folder):
        return load_run(folder, device, use_ema, step)
    if not use_ema or step is not None:
        raise RunError(
            f"{text} is an exported model, which holds one set of weights; leave out --no-ema and --checkpoint "
            "(they choose among a run's checkpoints)."
        )
    loaded = read_pretrained(text).loaded(device)
    if text.startswith(HUB_PREFIX):  # never write into the Hub's cache
        loaded.outputs = Path(text[len(HUB_PREFIX) :].rstrip("/").split("/")[-1])
    return loaded


def _check_out(out: Path, run_dir: Path) -> None:
    """Refuse an output folder that holds anything but an earlier export (md4 never overwrites a user's files)."""
    if out.resolve() == run_dir.resolve() or run_dir.resolve() in out.resolve().parents:
        raise RunError(f"{out} is inside the run {run_dir}; export to a folder outside it.")
    if out.exists() and not out.is_dir():
        raise RunError(f"{out} is a file; choose a folder to export to.")
    if out.is_dir() and any(out.iterdir()) and not is_export(out):
        raise RunError(f"{out} is not empty and is not an md4 export, so md4 will not write into it; choose another.")


def export_run(run_dir: str | os.PathLike[str], out: str | os.PathLike[str], raw: bool = False,
               step: int | None = None, license_id: str = "apache-2.0", repo_id: str | None = None) -> Path:  # fmt: skip
    """Write the model of a run (its EMA weights, or the online ones with ``raw``; the newest checkpoint, or
    ``step``'s) as an exported folder ``out`` with its model card (front matter ``license: license_id``; its
    commands name ``hf:repo_id`` when given); return ``out``."""
    run_dir, out = Path(run_dir), Path(out)
    _check_out(out, run_dir)
    pretrained = _read_run_weights(run_dir, not raw, step)
    files = pretrained.files
    _check_fits(files, find_checkpoint(run_dir, step) / ("model.safetensors" if raw else "ema.safetensors"))
    out.mkdir(parents=True, exist_ok=True)
    data = read_object(run_dir / "data.json")
    header = {
        "library": LIBRARY,
        "export_format": EXPORT_FORMAT,
        "md4_version": _version(),
        "kind": files.config.model["kind"],
        "network": files.config.model["net"],
        "config": copy_mlm_description(files.config.to_dict(), out),
        "data": data,
        "checkpoint": {"step": pretrained.step, "weights": "raw" if raw else "ema", "run": run_dir.name},
    }
    with atomic_output(out / WEIGHTS_FILE) as tmp:
        tensors = {name: value.contiguous() for name, value in pretrained.weights.items()}
        save_file(tensors, str(tmp), metadata={"format": "pt", "library": LIBRARY})
    write_atomic(out / CONFIG_FILE, json.dumps(header, indent=2, sort_keys=True) + "\n")
    tokenizer = _tokenizer_json(files.codec)
    if tokenizer is not None:
        write_atomic(out / TOKENIZER_FILE, tokenizer)
    extras = run_extras(run_dir)
    for name, path in extras.files.items():
        shutil.copyfile(path, out / name)
    write_model_card(
        out / "README.md", header, files, extras, _parameter_count(pretrained.weights), license_id, repo_id
    )
    return out


def _parameter_count(weights: dict[str, torch.Tensor]) -> int:
    return sum(value.numel() for value in weights.values() if value.is_floating_point())


def _tokenizer_json(codec: Codec) -> str | None:
    """The ``tokenizer.json`` of a codec that is a Hugging Face tokenizer, so that Hub tools can read it."""
    described: dict[str, Any] = codec.to_dict()
    tokenizer = described.get("tokenizer") if described["type"] == "tokenizers" else None
    return json.dumps(tokenizer, ensure_ascii=False) if isinstance(tokenizer, dict) else None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("md4")
    except PackageNotFoundError:  # pragma: no cover (a source tree without an install)
        return "unknown"


__all__ = [
    "EXPORT_FORMAT",
    "Pretrained",
    "export_run",
    "from_pretrained",
    "is_export",
    "read_export",
    "read_pretrained",
]
