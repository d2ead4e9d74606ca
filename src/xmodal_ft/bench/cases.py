"""Benchmark cases: a model, a variant and a token shape, built as `train.py` builds them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from xmodal_ft import models, variants
from xmodal_ft.tasks.base import Split, TaskData, TaskSpec

CONF = Path(__file__).resolve().parents[3] / "conf"
# GPT-2 small's architecture (AutoConfig.for_model("gpt2") defaults) with random weights: the
# hub checkpoint is not available offline and random weights cost the same FLOPs.
GPT2_SMALL = {"model_type": "gpt2"}


@dataclass(frozen=True)
class Case:
    """One benchmark case. `model` names a conf/model option; `arch` replaces its architecture."""

    name: str
    model: str
    variant: str  # fpt or unfrozen
    seq_len: int
    token_dim: int
    batch: int
    steps: int  # timed steps
    warmup: int = 2
    arch: dict[str, Any] | None = None
    model_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {"attn_dropout": 0.1}
    threads: int | str | None = "auto"  # as the root key `threads`
    grad_checkpointing: bool = False
    compile: bool = False
    fused_optimizer: bool = True  # False: the multi-tensor `foreach` kernels, to measure the gain
    keep_freed_memory: bool = True  # False: glibc's default, returning freed memory to the kernel
    lr: float = 1e-4
    seed: int = 0

    def with_(self, **changes: Any) -> Case:
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_config(case: Case) -> models.ModelConfig:
    """The conf/model option of `case`, with its architecture and overrides applied."""
    values = _option("model", case.model)
    if case.arch is not None:
        values.update(path=None, arch=case.arch)
    values.update(case.model_overrides)
    return models.ModelConfig(**values)


def variant_config(case: Case, pretrained: bool) -> variants.VariantConfig:
    """FPT or unfrozen, on the pretrained weights when the model has them, else random init."""
    names = {
        ("fpt", True): "fpt",
        ("fpt", False): "frozen_random",
        ("unfrozen", True): "unfrozen_pretrained",
        ("unfrozen", False): "unfrozen_random",
    }
    name = names[(case.variant, pretrained)]
    return variants.VariantConfig(**_option("variant", name))


def _option(group: str, name: str) -> dict[str, Any]:
    """conf/<group>/<name>.yaml as train.py composes it (with its schema's defaults)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"{group}={name}"])
    return OmegaConf.to_container(cfg[group], resolve=True)  # type: ignore[return-value]


def build_model(case: Case, spec: TaskSpec, device: torch.device) -> models.CrossModalModel:
    """The model of `case` with its variant's trainable parameters, on `device`."""
    cfg = model_config(case)
    variant = variant_config(case, pretrained=cfg.path is not None)
    model = models.build(cfg, spec, pretrained=variant.pretrained, seed=case.seed)
    variants.apply(model, variant)
    model.to(device)
    models.speed_up(model, grad_checkpointing=case.grad_checkpointing, compile=case.compile)
    return model


def synthetic_task(case: Case, n_train: int) -> TaskData:
    """Uniform [0, 1) tokens of the case's shape with random labels over 10 classes (seeded)."""
    spec = TaskSpec(
        f"synthetic_{case.seq_len}x{case.token_dim}",
        num_classes=10,
        input_kind="continuous",
        seq_len=case.seq_len,
        token_dim=case.token_dim,
    )
    g = torch.Generator().manual_seed(1234)

    def split(n: int) -> Split:
        return Split(
            torch.rand(n, case.seq_len, case.token_dim, generator=g),
            torch.randint(0, 10, (n,), generator=g),
        )

    return TaskData(spec, split(n_train), split(1), split(1))  # eval costs ~nothing
