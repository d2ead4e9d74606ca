"""Shared fixtures: offline environment, composed tiny configs, tiny saved "pretrained" models."""

from __future__ import annotations

import os
from pathlib import Path

# Before transformers / huggingface_hub are imported: they read these once, at import.
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402
from transformers import AutoConfig, AutoModel  # noqa: E402

CONF = str(Path(__file__).resolve().parents[1] / "conf")
TINY = [
    "model=tiny_gpt2",
    "task=digits",
    "task.n_train=64",
    "batch_size=8",
    "max_steps=6",
    "eval_every=3",
    "progress=false",
    "cache_dir=null",
]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    torch.manual_seed(0)
    torch.set_num_threads(1)  # tiny models: threads only add overhead on 2 shared cores


def make_cfg(*overrides: str) -> DictConfig:
    """The real config composed with tiny settings, then `overrides`."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=[*TINY, *overrides])


def save_tiny(model_yaml: str, directory: Path) -> Path:
    """Save a randomly initialised model of a tiny config as if it were a pretrained checkpoint."""
    arch = dict(make_cfg(f"model={model_yaml}").model.arch)
    torch.manual_seed(1234)
    AutoModel.from_config(AutoConfig.for_model(**arch)).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny("tiny_gpt2", tmp_path_factory.mktemp("tiny_gpt2"))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny("tiny_bert", tmp_path_factory.mktemp("tiny_bert"))


def with_keys(cfg: DictConfig, **values: object) -> DictConfig:
    """A copy of `cfg` with root keys set (for keys tests change after composing)."""
    cfg = cfg.copy()
    with open_dict(cfg):
        for key, value in values.items():
            cfg[key] = value
    return cfg
