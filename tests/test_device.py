"""Device handling: CPU in full precision; on CUDA, TF32 matmuls, bf16 autocast, CUDA RNG state in
checkpoints and a run that trains (tests marked `gpu` skip without CUDA)."""

from __future__ import annotations

import pytest
import torch

from conftest import Interrupt, KillAt, sign_task, tiny_model
from xmodal_ft import engine, schemes
from xmodal_ft.engine import FitConfig, fit


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
def test_a_cuda_run_learns_and_resumes_with_its_cuda_rng_state(tmp_path) -> None:
    cfg = FitConfig(
        batch_size=16, max_steps=60, eval_every=20, checkpoint_every=20, log_every=10,
        progress=False,
    )  # fmt: skip

    def train(path=None, tracker=None):
        torch.manual_seed(0)
        model = tiny_model().to("cuda")
        plan = schemes.build(model, schemes.SchemeConfig(), lr=3e-3, total_steps=cfg.max_steps)
        return fit(model, plan, sign_task(), cfg, tracker, path)

    reference = train()
    assert reference.best_val["acc"] > 0.7
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(Interrupt):
        train(path, KillAt(50))
    saved = torch.load(path, weights_only=False)
    assert saved["loop"]["step"] == 40 and len(saved["cuda_rng"]) == torch.cuda.device_count()
    torch.cuda.manual_seed_all(123)  # a new process; the checkpoint restores the CUDA RNG
    resumed = train(path)
    scores = [[h["val/acc"] for h in r.history] for r in (resumed, reference)]
    assert scores[0] == pytest.approx(scores[1], abs=0.02)  # bf16 and CUDA kernels: not bitwise
