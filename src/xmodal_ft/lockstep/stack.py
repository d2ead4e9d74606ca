"""R runs of one configuration stacked into one carrier model (the `Stacked` layout).

`Stacked(runs)` turns R runs (each model built from its own seed, exactly as a sequential run
builds it) into one carrier model whose batch is the runs' batches, run-major: rows
[r·B, (r+1)·B) belong to run r. The carrier is a copy of run 0's modules sharing its tensors, in
which `blocks.swap` puts stacked layers (`xmodal_ft.blocks`; `print(stacked.model)` names them):
trainable leaf modules compute with tensors stacked on a leading block axis, as a lone run's
compute with one block (`blocks.to_block_form`), so each run's numbers are its lone run's bit
for bit on fixed-length inputs. Frozen modules equal in every run stay single and take all R·B
rows as one batch (the pretrained backbone under FPT); frozen ones whose values differ per block
of runs (random backbones of several seeds) become `FrozenBlocks`: each block's rows through one
of its runs' modules; attention has no parameters and runs unchanged.

Each run model's parameters become views of the stacked tensors, so every run keeps its own
optimizer (its own LR and Adam state), checkpoint and best-weights copies, all built on its own
model as a lone run would. One backward fills the stacked gradients; clipping and the optimizer
step then work per run on slices of them: the step calls torch's fused Adam/SGD kernel on each
run's own tensors (`fused.FusedStep`: the update `optimizer.step()` makes, bit for bit, without
its per-call Python work), so R runs cost R kernel calls and one step-counter update per step.
Where torch lacks those kernels, each run takes its own `optimizer.step()` on its views.

Randomness is per run too: each run has its own random stream (in the state its lone run would
start training with), and dropout (`blocks.RunDropout`, and attention dropout: `attention`)
draws each run's masks from it for that run's rows (`draws.RunDraws`), so a lockstep run draws
exactly the masks of its lone run while the ops run once on the whole batch.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Sequence

import torch
from torch import nn

from xmodal_ft import blocks
from xmodal_ft.engine.layout import Layout, Single, trainable
from xmodal_ft.engine.run import Run
from xmodal_ft.errors import DEFAULT_LAUNCHER, LockstepError
from xmodal_ft.lockstep import attention, sharing
from xmodal_ft.lockstep.draws import RunDraws
from xmodal_ft.lockstep.fused import FusedStep


class Stacked:
    """R runs trained as one carrier model (see the module docstring)."""

    def __init__(self, runs: Sequence[Run]):
        self.runs = list(runs)
        models = [run.model for run in self.runs]
        self.draws = RunDraws([run.stream for run in self.runs])
        self.params: list[nn.Parameter] = []  # the stacked trainable parameters
        self._slot: dict[int, int] = {}  # id(a run's parameter) -> its index in self.params
        self._grads: list[torch.Tensor] | None = None  # this step's, once backward ran
        self._clip_order: list[int] = []
        self._fused: list[FusedStep | None] | None = None  # built at the first step
        self._counts = torch.zeros(0)  # Adam's step counters, (runs, parameters)
        self._advance = torch.zeros(0)
        _refuse_random_draws(models[0])
        self.model = _carrier(models[0])
        self.rows = blocks.BatchRows()  # the carrier's batch rows (R · per-run rows)
        self.rows.track(self.model)
        self.draws.track(self.model)
        run_modules = [dict(m.named_modules()) for m in models]
        blocks.swap(self.model, lambda name, module: self._block_form(name, module, run_modules))
        attention.use(self.model, self.draws)
        for model in models:  # each computes as its lone run (step-0 validation per seed)
            blocks.to_block_form(model)

    def _block_form(
        self, name: str, module: nn.Module, run_modules: list[dict[str, nn.Module]]
    ) -> nn.Module | None:
        """What computes carrier module `name` for every run (None: the module as it is)."""
        new = self._stacked_form(name, module, run_modules)
        if new is not None and blocks.has_hooks(module):
            raise LockstepError(
                f"lockstep cannot carry the hooks registered on {name} "
                f"({type(module).__name__}) to its stacked form: {DEFAULT_LAUNCHER}"
            )
        return new

    def _stacked_form(
        self, name: str, module: nn.Module, run_modules: list[dict[str, nn.Module]]
    ) -> nn.Module | None:
        runs = len(self.runs)
        if isinstance(module, nn.Dropout):
            return blocks.RunDropout(module, self.draws, runs)
        names = [n for n, _ in module.named_parameters(recurse=False)]
        if not names:
            return None
        values = [[getattr(rm[name], n) for rm in run_modules] for n in names]
        count = sharing.value_blocks(values)
        trains = blocks.trains(module)
        if trains and not blocks.has_block_form(module):
            raise LockstepError(
                f"lockstep cannot stack {type(module).__name__} ({name}): {DEFAULT_LAUNCHER}"
            )
        params = {n: self._stack(per_run, count) for n, per_run in zip(names, values, strict=True)}
        embedding = type(module) is nn.Embedding and blocks.has_block_form(module)
        if trains or (count > 1 and embedding):
            return blocks.block_form(module, params, count, self.rows)
        if count > 1:  # frozen, one value per block of runs (random backbones per seed)
            size = runs // count
            return blocks.FrozenBlocks([run_modules[b * size][name] for b in range(count)])
        return None

    def _stack(self, per_run: list[nn.Parameter], count: int) -> nn.Parameter:
        """One parameter of `count` blocks; each run's parameter becomes a view of its block."""
        first = per_run[0]
        if count == 1:
            for param in per_run[1:]:
                param.data = first.data
            return first
        size = len(self.runs) // count
        stacked = torch.stack([per_run[b * size].detach() for b in range(count)])
        param = nn.Parameter(stacked, requires_grad=first.requires_grad)
        for run, value in enumerate(per_run):
            value.data = param.data[run // size]
            if param.requires_grad:  # trainable: one block per run
                self._slot[id(value)] = len(self.params)
        if param.requires_grad:
            self.params.append(param)
        return param

    def grads(self) -> list[torch.Tensor]:
        """This step's gradient of each stacked parameter, (runs, ...): the one backward handed
        it (zeros where backward did not reach it)."""
        if self._grads is None:
            self._grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in self.params]
        return self._grads

    @torch.no_grad()
    def clip(self, max_norm: float) -> None:
        """`clip_grad_norm_` of each run over its own slices of the gradients: each tensor's
        norm, the norm of those, then every gradient times min(1, max_norm / (norm + 1e-6))."""
        grads = self.grads()
        if not self._clip_order:  # the stacked gradients in a run's parameter order
            self._clip_order = [self._slot[id(p)] for p in trainable(self.runs[0].model)]
        norms = [torch.linalg.vector_norm(grads[j].flatten(1), dim=1) for j in self._clip_order]
        total = torch.linalg.vector_norm(torch.stack(norms, dim=1), dim=1)
        coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for grad in grads:
            grad.mul_(coef.view(-1, *[1] * (grad.dim() - 1)))

    @torch.no_grad()
    def step(self) -> None:
        """One optimizer step of each run.

        Runs with fused Adam or SGD call torch's fused kernel directly on their own tensors
        (`FusedStep`: bit for bit their `optimizer.step()`, without its per-call Python work);
        Adam's step counters of all runs are one (runs, parameters) tensor, advanced in one op.
        Other optimizers take their own step on their parameters' gradient views.
        """
        optimizers = [run.plan.optimizer for run in self.runs]
        if self._fused is None:
            width = max(len(trainable(run.model)) for run in self.runs)
            self._counts = torch.zeros(len(self.runs), width, device=self.params[0].device)
            self._fused = [
                FusedStep.of(opt, steps, self._slot)
                for opt, steps in zip(optimizers, self._counts, strict=True)
            ]
            adam = [bool(f and f.adam) for f in self._fused]
            self._advance = torch.tensor(adam, dtype=torch.float32, device=self._counts.device)
            self._advance = self._advance.unsqueeze(1)
        self._counts.add_(self._advance)
        by_run = list(zip(*(g.unbind(0) for g in self.grads()), strict=True))  # [run][slot]
        for optimizer, fused, grads in zip(optimizers, self._fused, by_run, strict=True):
            if fused is not None:
                fused(grads)
                continue
            for group in optimizer.param_groups:
                for param in group["params"]:
                    param.grad = grads[self._slot[id(param)]]
            optimizer.step()

    def without(self, gone: Collection[Run]) -> Layout:
        """The layout of the other runs; `gone` leave the stack, so each step computes only
        the runs kept. Their models, optimizers (Adam's step counters taken at the next step)
        and random streams go on where they are; one run left trains as `Single`, its stream
        the global random state (the RNG its lone run draws from)."""
        kept = [run for run in self.runs if run not in gone]
        self.close()
        return Single(kept[0]) if len(kept) == 1 else Stacked(kept)

    def twins(self) -> list[int]:
        return sharing.first_equal([run.model for run in self.runs])

    def zero_grad(self) -> None:
        """Gradients freed: the next backward hands each stacked parameter a new gradient (no
        zero fill, no accumulation into a kept buffer)."""
        for param in self.params:
            param.grad = None
        self._grads = None

    def close(self) -> None:
        """Stop the threads that draw dropout masks (a sweep builds many layouts)."""
        self.draws.close()


def _carrier(model: nn.Module) -> nn.Module:
    """A copy of `model`'s modules that shares its tensors (its layers are then swapped; the
    run's own model stays as built)."""
    shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return copy.deepcopy(model, memo=shared)


def _refuse_random_draws(model: nn.Module) -> None:
    """Modules that draw random numbers in forward (from the global generator) would draw one
    stream for all runs."""
    for name, module in model.named_modules():
        if getattr(module, "draws_random", False):  # e.g. data augmentation in forward
            raise LockstepError(
                f"lockstep cannot give each run its own random draws in {name} "
                f"({type(module).__name__}): {DEFAULT_LAUNCHER}"
            )
