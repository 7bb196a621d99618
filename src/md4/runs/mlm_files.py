"""The masked LM's own description inside an exported ``model.net=hf-mlm`` model, so that the folder needs nothing
else: its transformers ``config.json`` and tokenizer files (never its weights: ``model.safetensors`` holds md4's)
copied into ``mlm/``, and ``net.path`` / ``data.tokenizer`` pointing there, relative to the folder."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from md4.runs.directory import RunError

MLM_FOLDER = "mlm"
NETWORK = "hf-mlm"
MLM_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
             "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model")  # fmt: skip


def _source_folder(path: str) -> Path:
    """The local folder of the masked LM at ``path`` (a folder, or a hub id found in or fetched into the Hub's
    cache, its description files alone)."""
    folder = Path(path).expanduser()
    if folder.is_dir():
        return folder
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path, allow_patterns=list(MLM_FILES)))
    except Exception as err:  # noqa: BLE001 (offline, not found, network: many kinds, one sentence)
        raise RunError(
            f"the masked LM net.path={path!r} is neither a folder here nor a Hub model md4 can fetch ({err}); "
            "export on the machine that trained the run."
        ) from None


def copy_mlm_description(config: dict[str, Any], out: Path) -> dict[str, Any]:
    """For an hf-mlm config (a ``Config.to_dict()``), copy the masked LM's description into ``out/mlm`` and return
    the config with ``net.path`` and ``data.tokenizer`` naming it relative to ``out``; other configs as given."""
    if config["model"]["net"] != NETWORK:
        return config
    source, target = _source_folder(config["net"]["path"]), out / MLM_FOLDER
    target.mkdir(parents=True, exist_ok=True)
    for name in MLM_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)
    return {
        **config,
        "net": {**config["net"], "path": MLM_FOLDER},
        "data": {**config["data"], "tokenizer": f"hf:{MLM_FOLDER}"},
    }


def locate_mlm_description(config: dict[str, Any], folder: Path) -> dict[str, Any]:
    """An exported hf-mlm config with ``net.path`` and ``data.tokenizer`` made absolute inside ``folder``."""
    if not (isinstance(config.get("model"), dict) and config["model"].get("net") == NETWORK):
        return config
    net = config.get("net") if isinstance(config.get("net"), dict) else {}
    if net.get("path") != MLM_FOLDER:
        return config
    inside = str((folder / MLM_FOLDER).resolve())
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    return {**config, "net": {**net, "path": inside}, "data": {**data, "tokenizer": f"hf:{inside}"}}
