"""The Hugging Face Hub, kept thin: download an exported model's repository, upload an exported folder.

md4 uploads the folder ``md4 export`` writes with ``HfApi.upload_folder`` rather than through
``PyTorchModelHubMixin``: the mixin serialises a module's constructor arguments into its own ``config.json``,
while an md4 model is built from registries by its whole run config (kind, network, data description, codec), so
the exported folder is already the one format md4 reads locally and from the Hub, and it carries md4's own model
card. ``huggingface_hub`` (the ``hub`` extra) is imported only here, and only when the Hub is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from md4.runs.directory import RunError

HUB_PREFIX = "hf:"
EXPORTED_FILES = ["config.json", "model.safetensors", "tokenizer.json", "README.md", "eval.json", "eval.md",
                  "sample.txt", "sample.png", "mlm/*"]  # fmt: skip


def _hub() -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise RunError(
            "the Hugging Face Hub needs the huggingface_hub package; install it with `pip install 'md4[hub]'`."
        ) from None
    return huggingface_hub


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if it is a valid Hub repository name (``user/name``); else one sentence."""
    _hub()
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:  # its own sentence says which character is wrong
        raise RunError(f"{repo_id!r} is not a Hub repository id like user/model-name ({err}).") from None
    if "/" not in repo_id:
        raise RunError(f"{repo_id!r} is not a Hub repository id; write it as user/model-name.")
    return repo_id


def download(repo_id: str, revision: str | None = None) -> Path:
    """The local folder of the Hub repository ``repo_id`` (its exported files), downloaded into the Hub's cache
    the first time; offline (``HF_HUB_OFFLINE=1``) it is read from that cache."""
    hub = _hub()
    check_repo_id(repo_id)
    try:
        folder = hub.snapshot_download(repo_id, revision=revision, allow_patterns=EXPORTED_FILES)
    except Exception as err:  # noqa: BLE001 (offline, not found, gated, network: many kinds, one sentence)
        raise RunError(
            f"could not download {HUB_PREFIX}{repo_id} from the Hugging Face Hub ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no detail'}); check the name, your network and your "
            "token (`hf auth login`), or pass a local exported folder."
        ) from None
    return Path(folder)


def upload(folder: Path, repo_id: str, private: bool = False, message: str | None = None) -> str:
    """Upload an exported ``folder`` to the Hub repository ``repo_id`` (created if new); return its URL."""
    hub = _hub()
    check_repo_id(repo_id)
    api = hub.HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            commit_message=message or "Upload an md4 model",
            allow_patterns=EXPORTED_FILES,
        )
    except Exception as err:  # noqa: BLE001 (offline, no token, no write access, network: many kinds, one sentence)
        raise RunError(
            f"could not upload to {HUB_PREFIX}{repo_id} ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no detail'}); log in with `hf auth login` (a token with "
            "write access), check your network, or share the folder of `md4 export` another way."
        ) from None
    return f"https://huggingface.co/{repo_id}"
