"""Device handling: CPU in full precision; on CUDA, TF32 matmuls, bf16 autocast in the training
loop, the CUDA RNG state in checkpoints, runs that match CPU runs, lockstep runs that match
sequential ones (tests marked `gpu` skip without CUDA, saying so)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import hardware
from conftest import Interrupt, KillAt, Recorder, make_cfg, read_results, sign_task, tiny_model
from xmodal_ft import engine, recipe, schemes
from xmodal_ft.engine import FitConfig, fit
from xmodal_ft.runspec import RunSpec


def test_cpu_runs_in_full_precision() -> None:
    device = engine.select_device("cpu")
    assert device == torch.device("cpu")
    with engine.autocast(device):
        assert not torch.is_autocast_enabled("cpu")
        y = torch.randn(4, 4) @ torch.randn(4, 4)
    assert y.dtype == torch.float32


def test_auto_picks_cuda_exactly_when_it_is_available() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert engine.select_device("auto").type == expected


def output_dtypes(device: str) -> set[torch.dtype]:
    """The dtypes of the output layer's results while `fit` trains and evaluates on `device`."""
    model = tiny_model().to(device)
    seen: set[torch.dtype] = set()
    model.output_layer.register_forward_hook(lambda module, args, out: seen.add(out.dtype))
    plan = schemes.build(model, schemes.SchemeConfig(), lr=1e-3)
    cfg = FitConfig(batch_size=8, max_steps=2, eval_every=2, progress=False)
    fit(model, plan, sign_task(32), cfg)
    return seen


def test_training_and_evaluation_run_in_full_precision_on_cpu() -> None:
    assert output_dtypes("cpu") == {torch.float32}


@pytest.mark.gpu
def test_cuda_enables_tf32_and_bf16_autocast() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    device = engine.select_device("cuda")
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    a = torch.randn(8, 8, device=device)
    with engine.autocast(device):
        assert (a @ a).dtype == torch.bfloat16
    assert (a @ a).dtype == torch.float32


@pytest.mark.gpu
def test_training_and_evaluation_run_under_bf16_autocast_on_cuda() -> None:
    assert output_dtypes("cuda") == {torch.bfloat16}


@pytest.mark.gpu
def test_a_few_cuda_steps_match_the_cpu_steps() -> None:
    """Same init, batches and Adam on both devices, dropout off: bf16 autocast moves the losses
    by rounding only."""
    cfg = FitConfig(batch_size=16, max_steps=10, eval_every=5, log_every=1, progress=False)
    runs = {}
    for device in ("cpu", "cuda"):
        model = tiny_model(dropout=0.0).to(device)
        plan = schemes.build(model, schemes.SchemeConfig(), lr=3e-3, total_steps=cfg.max_steps)
        log = Recorder()
        runs[device] = fit(model, plan, sign_task(), cfg, log), log.series("train/loss")
    (cpu, cpu_losses), (cuda, cuda_losses) = runs["cpu"], runs["cuda"]
    assert [s for s, _ in cuda_losses] == [s for s, _ in cpu_losses] == list(range(1, 11))
    torch.testing.assert_close(cuda_losses, cpu_losses, rtol=0, atol=0.05)
    assert cuda.best_val["acc"] == pytest.approx(cpu.best_val["acc"], abs=0.1)
    assert cuda.test["acc"] == pytest.approx(cpu.test["acc"], abs=0.1)


@pytest.mark.gpu
def test_a_cuda_run_learns_and_resumes_with_its_cuda_rng_state(tmp_path: Path) -> None:
    """Dropout draws from the CUDA generator: only a restored CUDA state repeats the masks, so
    the resumed losses equal the uninterrupted run's."""
    cfg = FitConfig(
        batch_size=16, max_steps=60, eval_every=20, checkpoint_every=20, log_every=10,
        progress=False,
    )  # fmt: skip

    def train(path: Path | None = None, tracker: object = None) -> engine.FitResult:
        torch.manual_seed(0)
        model = tiny_model().to("cuda")  # dropout 0.1
        plan = schemes.build(model, schemes.SchemeConfig(), lr=3e-3, total_steps=cfg.max_steps)
        return fit(model, plan, sign_task(), cfg, tracker, path)

    reference_log = Recorder()
    reference = train(tracker=reference_log)
    assert reference.best_val["acc"] > 0.7
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(Interrupt):
        train(path, KillAt(50))  # checkpoint at step 40
    torch.cuda.manual_seed_all(123)  # as in a new process: the checkpoint must restore the state
    resumed_log = Recorder()
    resumed = train(path, resumed_log)
    losses = resumed_log.series("train/loss")
    assert [s for s, _ in losses] == [50, 60]  # resumed from step 40
    expected = [(s, v) for s, v in reference_log.series("train/loss") if s > 40]
    torch.testing.assert_close(losses, expected, rtol=0, atol=1e-3)
    scores = [[h["val/acc"] for h in r.history] for r in (resumed, reference)]
    assert scores[0] == pytest.approx(scores[1], abs=0.02)


@pytest.mark.gpu
def test_a_run_of_train_py_config_trains_on_cuda(tmp_path: Path) -> None:
    cfg = make_cfg("variant=unfrozen_random", "device=auto", "max_steps=20", "eval_every=10")
    recipe.run(cfg, tmp_path)
    results = read_results(tmp_path)
    assert results["device"].startswith("cuda")
    assert results["steps"] == 20


@pytest.mark.gpu
def test_lockstep_runs_on_cuda_match_their_own_lone_runs(tmp_path: Path) -> None:
    """Two runs of other LRs and seeds together (each run's dropout from its own CUDA generator)
    vs each alone: every run's per-step losses are its lone run's within bf16 rounding and
    nearer its own lone run's than the other's, so two runs swapped would fail."""
    grid = [(1e-3, 0), (3e-3, 1)]

    def specs(root: Path) -> list[RunSpec]:
        overrides = ("variant=unfrozen_random", "device=cuda", "max_steps=12", "eval_every=6")
        return [
            RunSpec(
                make_cfg(*overrides, f"lr={lr}", f"seed={seed}", "log_every=1"),
                root / f"{lr}_{seed}",
            )
            for lr, seed in grid
        ]

    def losses(run_dir: Path) -> torch.Tensor:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return torch.tensor([r["train/loss"] for r in map(json.loads, lines) if "train/loss" in r])

    alone, together = specs(tmp_path / "alone"), specs(tmp_path / "lockstep")
    for spec in alone:
        recipe.train([spec])
    recipe.train(together)
    own = [losses(spec.run_dir) for spec in alone]
    for r, spec in enumerate(together):
        assert read_results(spec.run_dir)["device"].startswith("cuda")
        mine = losses(spec.run_dir)
        assert len(mine) == 12
        torch.testing.assert_close(mine, own[r], rtol=0.05, atol=0.02)
        assert (mine - own[r]).abs().sum() < (mine - own[1 - r]).abs().sum()


@pytest.mark.gpu
def test_the_benchmark_measures_a_bf16_matmul_peak_on_cuda() -> None:
    device = engine.select_device("cuda")
    assert hardware.peak_matmul_flops(device, seconds=0.2) > 1e12  # any current GPU in bf16
    assert hardware.describe(device)["gpu"] == torch.cuda.get_device_name(device)
