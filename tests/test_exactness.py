"""Speed settings change time and memory, never results: loss sequences with each on and off.

Also: the benchmark's three tools (engine, HF Trainer, plain loop) train identically, and frozen
weights cost no gradient work.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from transformers.activations import NewGELUActivation

from benchmarks import hardware, report
from benchmarks.cases import Case, build_model, synthetic_task
from benchmarks.worker import measure
from conftest import make_cfg
from xmodal_ft import allocator, models, threads

TINY = Case(
    "tiny", "tiny_gpt2", "fpt", seq_len=8, token_dim=3, batch=4, steps=4, warmup=1,
    model_overrides={"dropout": 0.0}, lr=1e-3,
)  # fmt: skip


def losses(case: Case, tools: tuple[str, ...] = ("xmodal",)) -> list[list[float]]:
    return [r["losses"] for r in measure(case, list(tools), count_flops=False)]


@pytest.fixture(scope="module")
def three_tools() -> list[dict]:
    return measure(TINY, ["xmodal", "trainer", "naive"])


def test_engine_trainer_and_plain_loop_have_the_same_loss_sequence(three_tools: list) -> None:
    ours, trainer, naive = (r["losses"] for r in three_tools)
    assert len(ours) == len(trainer) == len(naive) == 5
    torch.testing.assert_close(trainer, ours, rtol=0, atol=1e-5)
    torch.testing.assert_close(naive, ours, rtol=0, atol=1e-5)
    assert ours[0] == trainer[0]  # same seed, same first batch, same first-step loss


def test_report_shows_the_ratio_to_the_trainer(three_tools: list) -> None:
    peak = 1e11
    text = report.markdown(
        {
            "quick": True,
            "machine": hardware.describe(torch.device("cpu")),
            "peak_flops": peak,
            "seconds": 1.0,
            "throughput": [three_tools],
        }
    )
    ratio = three_tools[0]["samples_per_s"] / three_tools[1]["samples_per_s"]
    assert f"| {ratio:.2f}x |" in text


@pytest.mark.parametrize("variant", ["fpt", "unfrozen"])
def test_grad_checkpointing_keeps_the_losses(variant: str) -> None:
    case = TINY.with_(variant=variant)
    (plain,) = losses(case)
    (checkpointed,) = losses(case.with_(grad_checkpointing=True))
    torch.testing.assert_close(checkpointed, plain, rtol=0, atol=1e-6)


def test_threads_auto_gives_the_cores_other_processes_leave_free(
    monkeypatch,  # noqa: ANN001
) -> None:
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert threads._busy() >= 1  # the spinning process is counted
    finally:
        busy.kill()
        busy.wait()  # reaped here, not left for whoever waits on this process's children
    cores = threads.cores()
    for others, expected in ((0, cores), (1, cores - 1), (99, 1)):
        monkeypatch.setattr(threads, "_busy", lambda n=others: n)
        assert threads.set_threads("auto") == max(1, expected)
    assert threads.set_threads(None) == cores
    assert threads.set_threads(1) == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_kept_freed_memory_is_reused_without_page_faults() -> None:
    assert allocator.keep_freed_memory()

    def faults_of_allocating(megabytes: int = 64) -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            torch.empty(megabytes << 18).fill_(1.0)  # float32: 4 bytes each
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    faults_of_allocating()  # the first time the heap grows
    assert faults_of_allocating() < 100  # glibc's default: ~16k faults per 64 MiB allocation


def test_thread_count_keeps_the_losses() -> None:
    (one,) = losses(TINY.with_(threads=1))
    (default,) = losses(TINY.with_(threads=None))
    torch.testing.assert_close(one, default, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "model, attn_key, other_key",
    [("tiny_gpt2", "attn_pdrop", "resid_pdrop"),
     ("tiny_bert", "attention_probs_dropout_prob", "hidden_dropout_prob")],
)  # fmt: skip
def test_attn_dropout_sets_attention_dropout_only(
    model: str, attn_key: str, other_key: str
) -> None:
    spec = synthetic_task(TINY, 4).spec
    cfg = models.ModelConfig(**make_cfg(f"model={model}").model)
    cfg = models.ModelConfig(**{**cfg.__dict__, "dropout": 0.2, "attn_dropout": 0.0})
    config = models.build(cfg, spec, pretrained=False, seed=0).backbone.config
    assert (getattr(config, attn_key), getattr(config, other_key)) == (0.0, 0.2)
    cfg = models.ModelConfig(**{**cfg.__dict__, "attn_dropout": None})
    config = models.build(cfg, spec, pretrained=False, seed=0).backbone.config
    assert getattr(config, attn_key) == 0.2  # null: as `dropout`


def test_attn_dropout_leaves_evaluation_unchanged() -> None:
    data = synthetic_task(TINY, 16)
    outs = []
    for attn in (0.0, 0.1):
        case = TINY.with_(model_overrides={"dropout": 0.0, "attn_dropout": attn})
        model = build_model(case, data.spec, torch.device("cpu")).eval()
        with torch.inference_mode():
            outs.append(model(data.train.x))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_frozen_weights_get_no_gradient_and_cost_no_backward_flops() -> None:
    data = synthetic_task(TINY.with_(seq_len=32), 8)
    x, y = data.train.x, data.train.y
    flops = {}
    for variant in ("fpt", "unfrozen"):
        model = build_model(TINY.with_(variant=variant, seq_len=32), data.spec, torch.device("cpu"))
        forward = hardware.count_flops(lambda m=model: m(x))
        flops[variant] = (
            hardware.count_flops(lambda m=model: F.cross_entropy(m(x), y).backward()) / forward
        )
        grads = {n: p.grad is not None for n, p in model.named_parameters()}
        assert grads == {n: p.requires_grad for n, p in model.named_parameters()}
    # Backward of a frozen matmul computes only the input gradient (1x forward), not the weight's.
    assert flops["fpt"] < 2.3 < 2.7 < flops["unfrozen"]


def test_fused_gelu_computes_gpt2s_gelu_new() -> None:
    data = synthetic_task(TINY, 8)
    model = build_model(TINY, data.spec, torch.device("cpu"))
    assert model.backbone.config.activation_function == "gelu_pytorch_tanh"
    results = []
    for activation in (None, NewGELUActivation()):
        if activation is not None:
            for block in model.backbone.h:
                block.mlp.act = activation
        model.zero_grad()
        loss = F.cross_entropy(model(data.train.x), data.train.y)
        loss.backward()
        results.append((loss, [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_compile_keeps_the_losses() -> None:
    (plain,) = losses(TINY)
    (compiled,) = losses(TINY.with_(compile=True))
    torch.testing.assert_close(compiled, plain, rtol=0, atol=1e-5)


def test_dropout_keys_apply_to_pretrained_checkpoints(tiny_bert_dir) -> None:  # noqa: ANN001
    spec = synthetic_task(TINY, 4).spec
    cfg = make_cfg("model=tiny_bert", f"model.path={tiny_bert_dir}", "model.attn_dropout=0")
    model = models.build(models.ModelConfig(**cfg.model), spec, pretrained=True, seed=0)
    assert model.backbone.config.attention_probs_dropout_prob == 0.0
    assert model.backbone.config.hidden_dropout_prob == 0.1  # the checkpoint's


@pytest.mark.slow
def test_bench_runs_each_tool_in_its_own_process_with_the_first_tools_flop_count() -> None:
    from benchmarks.__main__ import _run_jobs
    from benchmarks.suite import Job

    (rows,) = _run_jobs([Job(TINY, ("xmodal", "naive"))])
    assert [r["tool"] for r in rows] == ["xmodal", "naive"]
    assert rows[0]["flops_per_step"] == rows[1]["flops_per_step"] > 0
    torch.testing.assert_close(rows[1]["losses"], rows[0]["losses"], rtol=0, atol=1e-5)
