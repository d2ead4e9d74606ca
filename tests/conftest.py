"""Shared fixtures: offline environment, composed tiny configs, tiny saved "pretrained" models."""

from __future__ import annotations

import json
import os
from pathlib import Path

# Before transformers / huggingface_hub are imported: they read these once, at import.
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402
from transformers import AutoConfig, AutoModel  # noqa: E402

from glue_helpers import save_tiny_text_model  # noqa: E402
from xmodal_ft import config, models  # noqa: E402
from xmodal_ft.engine import FitConfig, Run, TrainPlan  # noqa: E402
from xmodal_ft.record.results import write_results  # noqa: E402
from xmodal_ft.tasks.base import Split, TaskData, TaskSpec  # noqa: E402

# conf/'s schemas in Hydra's ConfigStore, for every test that composes conf/ (train.py: `run`).
config.register()

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
# Real data provided beside the repo on development and CI machines (never needed by users).
SHARED_DATA = ROOT.parent / "shared" / "data"
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


def read_results(run_dir: Path) -> dict:
    """A run's results.json, checked against its own history: the reported validation metric is
    the history's best, first reached at `best_step`."""
    results = json.loads((run_dir / "results.json").read_text())
    key = f"val/{results['metric']}"
    scores = [(h[key], h["step"]) for h in results["history"]]
    best = max(score for score, _ in scores)
    assert results[key] == best
    assert results["best_step"] == next(step for score, step in scores if score == best)
    return results


def fake_run(
    root: Path,
    lr: float = 1e-3,
    seed: int = 0,
    val: float = 0.5,
    test: float | dict[str, float] | None = None,
    *,
    vals: tuple[float, ...] | None = None,
    metric: str = "acc",
    task: str = "mnist",
    model: str = "gpt2",
    variant: str = "fpt",
    scheme: str | dict[str, str] = "fixed",
    **config: object,
) -> Path:
    """A complete results.json in the shape `run()` writes (the report's input), in a dir of
    `root` named after the run; returns the dir.

    Validation history: `vals` at steps 0, 100, 200, ... (best: their maximum), or else 0.1 at
    step 0 and `val`, the best, at step 10·(seed + 1). `test`: the test metric (default: the best
    validation score), or {metric: value} for several. `scheme`: a name or scheme keys (name
    fixed); `config`: more root keys.
    """
    key = f"val/{metric}"
    scheme = {"name": scheme} if isinstance(scheme, str) else {"name": "fixed", **scheme}
    if vals is None:
        best, best_step = val, 10 * (seed + 1)
        history = [{"step": 0, key: 0.1}, {"step": best_step, key: val}]
    else:
        best, best_step = max(vals), 100 * vals.index(max(vals))
        history = [{"step": 100 * i, key: v} for i, v in enumerate(vals)]
    tests = test if isinstance(test, dict) else {metric: best if test is None else test}
    cfg = {"task": {"name": task}, "model": {"name": model}, "variant": {"name": variant},
           "scheme": scheme, "lr": lr, "seed": seed, "max_steps": 100, **config}  # fmt: skip
    payload = {"status": "complete", "config": cfg, "metric": metric, key: best}
    payload |= {"best_step": best_step, "history": history}
    payload |= {f"test/{k}": v for k, v in tests.items()}
    run_dir = root / "-".join([task, model, variant, *scheme.values(), str(lr), str(seed)])
    write_results(run_dir, payload)
    return run_dir


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` skip, saying why, where CUDA is absent."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (marked gpu): runs on machines with a GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


SIGN = TaskSpec("sign", num_classes=2, input_kind="continuous", seq_len=8, token_dim=3)


def sign_task(n: int = 256) -> TaskData:
    """Label = whether the first feature summed over tokens is positive: learnable in few steps."""
    g = torch.Generator().manual_seed(0)

    def split(m: int) -> Split:
        x = torch.randn(m, 8, 3, generator=g)
        return Split(x, (x[:, :, 0].sum(dim=1) > 0).long())

    return TaskData(SIGN, split(n), split(128), split(128))


def tiny_model(
    model: str = "tiny_gpt2", spec: TaskSpec = SIGN, **changes: object
) -> models.CrossModalModel:
    """A randomly initialised (seed 0) tiny model of the real config, with `changes` applied."""
    cfg = models.ModelConfig(**{**make_cfg(f"model={model}").model, **changes})
    return models.build(cfg, spec, pretrained=False, seed=0)


def as_runs(
    models: list[torch.nn.Module], optimizers: list[torch.optim.Optimizer] | None = None
) -> list[Run]:
    """Runs of `models` for layouts built in tests: each with its optimizer (by default fused
    Adam over its parameters), default loop settings, and the global random state now."""
    if optimizers is None:
        optimizers = [torch.optim.Adam(m.parameters(), fused=True) for m in models]
    return [Run(m, TrainPlan(opt), FitConfig()) for m, opt in zip(models, optimizers, strict=True)]


def trainable_names(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="session")
def tiny_bert_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_bert saved with a tiny WordPiece tokenizer, for GLUE tasks."""
    arch = dict(make_cfg("model=tiny_bert").model.arch)
    return save_tiny_text_model(arch, tmp_path_factory.mktemp("tiny_bert_text"))


class Interrupt(RuntimeError):
    """Raised by `KillAt` to stop training the way a killed process would."""


class KillAt:
    """A tracker that raises once the loop logs `step` (after the checkpoint at that step)."""

    def __init__(self, step: int):
        self.step = step

    def log(self, values: dict[str, float], step: int) -> None:
        if step >= self.step:
            raise Interrupt(step)

    def summary(self, values: dict) -> None: ...

    def close(self) -> None: ...


class Recorder:
    """A tracker that keeps every logged record, as (step, values)."""

    def __init__(self) -> None:
        self.records: list[tuple[int, dict[str, float]]] = []

    def log(self, values: dict[str, float], step: int) -> None:
        self.records.append((step, dict(values)))

    def series(self, key: str) -> list[tuple[int, float]]:
        """(step, value) of every record holding `key`, e.g. "train/loss"."""
        return [(step, values[key]) for step, values in self.records if key in values]

    def summary(self, values: dict) -> None: ...

    def close(self) -> None: ...
