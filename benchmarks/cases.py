"""Benchmark cases: a model, a variant and a token shape, as the run config `train.py` composes.

A case becomes `train.py`'s own config: conf/config.yaml composed with the case's overrides, on
a synthetic task of the case's shape (`task._target_=benchmarks.cases.synthetic`), so what the
benchmark trains is what `python train.py <overrides>` trains.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf, open_dict

from xmodal_ft import config, models, variants
from xmodal_ft.tasks.base import Split, TaskData, TaskSpec

ROOT = Path(__file__).resolve().parent.parent  # the checkout: conf/, train.py
CONF = ROOT / "conf"
# GPT-2 small's architecture (AutoConfig.for_model("gpt2") defaults) with random weights: the
# hub checkpoint is not available offline and random weights cost the same FLOPs.
GPT2_SMALL = {"model_type": "gpt2"}
ABLATIONS = ("foreach_adam", "glibc_free")  # always-on optimisations turned off (worker.py)


@dataclass(frozen=True)
class Case:
    """One benchmark case. `model` names a conf/model option; `arch` sets keys of its
    architecture (random init: GPT2_SMALL is GPT-2 small's, the hub weights not needed)."""

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
    lr: float = 1e-4
    seed: int = 0
    # Not a config key: an always-on optimisation turned off, to measure what it gains
    # ("foreach_adam": torch's multi-tensor Adam; "glibc_free": freed memory back to the kernel).
    ablation: str | None = None

    def with_(self, **changes: Any) -> Case:
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def overrides(case: Case, pretrained: bool) -> list[str]:
    """The case as `train.py` command-line overrides (the task aside: `synthetic_task_config`);
    FPT and unfrozen on the model's pretrained weights or, without them, a random init."""
    out = [f"model={case.model}"]
    if case.arch is not None:  # random init of an architecture: `model_type` and its keys
        out += ["model.path=null", *(f"++model.arch.{k}={_value(v)}" for k, v in case.arch.items())]
    out += [f"model.{k}={_value(v)}" for k, v in case.model_overrides.items()]
    variant = {
        ("fpt", True): "fpt",
        ("fpt", False): "frozen_random",  # FPT's trainable parameters on random weights
        ("unfrozen", True): "unfrozen_pretrained",
        ("unfrozen", False): "unfrozen_random",
    }[(case.variant, pretrained)]
    steps = case.warmup + case.steps
    return [
        *out,
        f"variant={variant}",
        f"lr={case.lr}",
        f"seed={case.seed}",
        f"batch_size={case.batch}",
        f"max_steps={steps}",
        f"eval_every={steps + 1}",  # validation only at the start and the end
        "log_every=1",  # every step's loss and time
        "progress=false",
        "cache_dir=null",
        f"threads={_value(case.threads)}",
        f"grad_checkpointing={_value(case.grad_checkpointing)}",
        f"compile={_value(case.compile)}",
    ]


def run_config(case: Case) -> tuple[DictConfig, list[str]]:
    """`train.py`'s config for `case` (conf/config.yaml composed with the case's overrides, on
    the case's synthetic task), and those overrides."""
    cfg, args = _compose(overrides(case, pretrained=case.arch is None))
    if cfg.model.path is None and cfg.variant.pretrained:  # a model without pretrained weights
        cfg, args = _compose(overrides(case, pretrained=False))
    with open_dict(cfg):
        cfg.task = synthetic_task_config(case)
    return cfg, args


def _compose(args: list[str]) -> tuple[DictConfig, list[str]]:
    config.register()  # conf/'s schemas, as `from xmodal_ft import run` registers them for train.py
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=args), args


def synthetic_task_config(case: Case) -> dict[str, Any]:
    """The task config of `case`'s synthetic task, with a train split for every step."""
    n_train = case.batch * (case.warmup + case.steps)
    return {"_target_": f"{__name__}.synthetic", "name": "synthetic", "seq_len": case.seq_len,
            "token_dim": case.token_dim, "n_train": n_train}  # fmt: skip


def synthetic(*, seq_len: int, token_dim: int, n_train: int) -> TaskData:
    """Uniform [0, 1) tokens of one shape with random labels over 10 classes (seeded)."""
    spec = TaskSpec(
        f"synthetic_{seq_len}x{token_dim}",
        num_classes=10,
        input_kind="continuous",
        seq_len=seq_len,
        token_dim=token_dim,
    )
    g = torch.Generator().manual_seed(1234)

    def split(n: int) -> Split:
        return Split(
            torch.rand(n, seq_len, token_dim, generator=g), torch.randint(0, 10, (n,), generator=g)
        )

    return TaskData(spec, split(n_train), split(1), split(1))  # eval costs ~nothing


def synthetic_task(case: Case, n_train: int) -> TaskData:
    """The synthetic task of `case`'s shape with `n_train` training examples."""
    return synthetic(seq_len=case.seq_len, token_dim=case.token_dim, n_train=n_train)


def build_model(case: Case, spec: TaskSpec, device: torch.device) -> models.CrossModalModel:
    """The model of `case`'s run config with its variant's trainable parameters, on `device`, for
    the tools compared with xmodal-ft: the same weights as the recipe's model for that config
    (tests/test_exactness.py checks that their first losses are equal)."""
    cfg, _ = run_config(case)
    plain = OmegaConf.to_container(cfg, resolve=True)
    variant = variants.VariantConfig(**plain["variant"])
    model_cfg = models.ModelConfig(**plain["model"])
    build = get_method(model_cfg._target_)  # models.build, unless the model option names another
    model = build(model_cfg, spec, pretrained=variant.pretrained, seed=cfg.seed)
    variants.apply(model, variant)
    model.to(device)
    models.speed_up(model, grad_checkpointing=case.grad_checkpointing, compile=case.compile)
    return model


def _value(value: Any) -> str:
    """A Python value as a Hydra override value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
