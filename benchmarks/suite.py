"""The benchmark suites: which cases run, with how many steps (`quick` fits 10 min on 2 cores).

All cases set every dropout to 0 so that the tools' loss sequences are deterministic and
comparable; the cost of GPT-2's attention dropout is measured separately (`optimisations`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from benchmarks.cases import GPT2_SMALL, Case

NO_DROPOUT = {"dropout": 0.0}
MNIST = {"seq_len": 49, "token_dim": 16}  # 28x28 in 4x4 patches (Lu et al.)
LRA = {"seq_len": 1024, "token_dim": 1}  # CIFAR10-LRA grayscale pixels
SMALL_GPT2 = {"model_type": "gpt2", "n_layer": 4, "n_head": 4, "n_embd": 256}  # 3.2M params


@dataclass(frozen=True)
class Job:
    """A case and the tools that train it, in one worker process (or `group` of cases)."""

    case: Case
    tools: tuple[str, ...] = ("xmodal",)
    count_flops: bool = True
    group: str = ""  # jobs sharing a non-empty group share one process


def throughput(quick: bool) -> list[Job]:
    """xmodal-ft vs the HF Trainer (and a plain loop for small models) per case."""
    s = 3 if quick else 8  # timed steps for GPT-2 small at 49 tokens
    lra_batch, lra_steps = (1, 2) if quick else (4, 3)
    gpt2 = Case("", "gpt2", "fpt", batch=8, steps=s, warmup=2, arch=GPT2_SMALL,
                model_overrides=NO_DROPOUT, **MNIST)  # fmt: skip
    minilm = Case("", "minilm", "fpt", batch=8, steps=3 if quick else 10, warmup=2,
                  model_overrides=NO_DROPOUT, **MNIST)  # fmt: skip
    small = gpt2.with_(arch=SMALL_GPT2, steps=20 if quick else 100, warmup=5)
    tiny = Case("", "tiny_gpt2", "fpt", batch=8, steps=30 if quick else 200, warmup=5,
                model_overrides=NO_DROPOUT, **MNIST)  # fmt: skip
    jobs = []
    for variant in ("fpt", "unfrozen"):
        jobs += [
            Job(gpt2.with_(name=f"gpt2 {variant} 49 tok", variant=variant), ("xmodal", "trainer")),
            Job(
                gpt2.with_(
                    name=f"gpt2 {variant} 1024 tok",
                    variant=variant,
                    batch=lra_batch,
                    steps=lra_steps,
                    warmup=1,
                    **LRA,
                ),  # fmt: skip
                ("xmodal", "trainer"),
            ),
            Job(
                minilm.with_(name=f"minilm {variant} 49 tok", variant=variant),
                ("xmodal", "trainer"),
            ),
            Job(
                small.with_(name=f"gpt2-4x256 {variant} 49 tok", variant=variant),
                ("xmodal", "trainer", "naive"),
            ),  # fmt: skip
            Job(
                tiny.with_(name=f"tiny_gpt2 {variant} 49 tok", variant=variant),
                ("xmodal", "trainer", "naive"),
            ),  # fmt: skip
        ]
    return jobs


def memory(quick: bool) -> list[Job]:
    """The memory goal: one GPT-2 small FPT step at batch 8 x 1024 tokens."""
    case = Case("gpt2 fpt 1024 tok, batch 8", "gpt2", "fpt", batch=8, steps=1, warmup=0,
                arch=GPT2_SMALL, model_overrides=NO_DROPOUT, **LRA)  # fmt: skip
    return [Job(case, count_flops=False)]


def optimisations(quick: bool) -> list[Job]:
    """Each optional setting on and off, xmodal-ft only, in its own process (for memory)."""
    lra = Case("", "gpt2", "fpt", batch=1, steps=1 if quick else 3, warmup=1, arch=GPT2_SMALL,
               model_overrides=NO_DROPOUT, **LRA)  # fmt: skip
    unfrozen = Case("", "gpt2", "unfrozen", batch=8, steps=2 if quick else 6, warmup=1,
                    arch=GPT2_SMALL, model_overrides=NO_DROPOUT, **MNIST)  # fmt: skip
    tiny = Case("", "tiny_gpt2", "fpt", batch=8, steps=30 if quick else 200, warmup=5,
                model_overrides=NO_DROPOUT, **MNIST)  # fmt: skip
    jobs = [
        Job(lra.with_(name="1024 tok: attn_dropout 0 (SDPA flash)")),
        Job(
            lra.with_(
                name="1024 tok: attn_dropout 0.1 (math path)",
                model_overrides={"dropout": 0.0, "attn_dropout": 0.1},
            )
        ),  # fmt: skip
        Job(lra.with_(name="1024 tok: grad_checkpointing", grad_checkpointing=True)),  # fmt: skip
        Job(unfrozen.with_(name="gpt2 unfrozen 49 tok: fused Adam")),
        Job(unfrozen.with_(name="gpt2 unfrozen 49 tok: foreach Adam", ablation="foreach_adam")),
        Job(
            unfrozen.with_(
                name="gpt2 unfrozen 49 tok: freed memory back to the kernel (glibc default)",
                ablation="glibc_free",
            )
        ),  # fmt: skip
        Job(tiny.with_(name="tiny: threads=1", threads=1)),
        Job(tiny.with_(name="tiny: threads=auto (all free cores)")),
        Job(tiny.with_(name="tiny: threads=auto, compile", compile=True)),
    ]
    return [replace(job, count_flops=False) for job in jobs]


def scaling(quick: bool) -> list[Job]:
    """Time per GPT-2 FPT step against sequence length and depth (one process per sweep)."""
    steps = 1 if quick else 3
    lengths = (64, 256, 1024) if quick else (64, 128, 256, 512, 1024)
    depths = (1, 4, 12) if quick else (1, 2, 4, 8, 12)
    base = Case("", "gpt2", "fpt", batch=1, steps=steps, warmup=1, arch=GPT2_SMALL,
                model_overrides=NO_DROPOUT, seq_len=64, token_dim=1)  # fmt: skip
    jobs = [Job(base.with_(name=f"seq {n}", seq_len=n), group="seq") for n in lengths]
    jobs += [
        Job(
            base.with_(name=f"depth {d}", seq_len=256, arch={**GPT2_SMALL, "n_layer": d}),
            group="depth",
        )  # fmt: skip
        for d in depths
    ]
    return jobs


SECTIONS = {
    "throughput": throughput,
    "memory": memory,
    "optimisations": optimisations,
    "scaling": scaling,
}
