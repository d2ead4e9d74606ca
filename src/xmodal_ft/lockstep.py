"""Run layouts: one run's model as is, or R runs of one configuration stacked into one model.

`stack(models)` turns R run models (each built from its own seed, exactly as a sequential run
builds it) into one carrier model whose batch is the runs' batches, run-major: rows
[r·B, (r+1)·B) belong to run r. Trainable leaf modules compute with tensors stacked on a leading
block axis: Linear and GPT-2's Conv1D as a batched matmul over a (K, rows/K, features) view,
LayerNorm as torch's kernel per block, Embedding with per-block tables. A lone run's trainable
Linear, Conv1D and Embedding layers compute in the same block form (K = 1), so each run's numbers
are its lone run's bit for bit on fixed-length inputs (see `_as_blocks`). Frozen modules equal in
every run stay single and take all R·B rows as one batch (the pretrained backbone under FPT);
frozen ones whose values differ per block of runs (random backbones of several seeds) run each
block's rows through one of its runs' modules; attention has no parameters and runs unchanged.

Each run model's parameters become views of the stacked tensors, so every run keeps its own
optimizer (its own LR and Adam state), checkpoint and best-weights copies, all built on its own
model as a lone run would. One backward fills the stacked gradients; clipping and the optimizer
step then work per run on slices of them: the step calls torch's fused Adam/SGD kernel on each
run's own tensors (`FusedStep`: the update `optimizer.step()` makes, bit for bit, without its
per-call Python work), so R runs cost R kernel calls and one step-counter update per step.

Randomness is per run too: each run has its own generator (in the state its lone run would start
training with), and dropout (modules, and attention dropout through SDPA's math path written out)
draws each run's masks from it for that run's rows, so a lockstep run draws exactly the masks of
its lone run while the ops run once on the whole batch.
"""

from __future__ import annotations

import contextlib
import copy
import math
import types
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import optimizer as torch_optimizer
from transformers import AttentionInterface, PretrainedConfig
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.pytorch_utils import Conv1D

from xmodal_ft.errors import UserError
from xmodal_ft.inputs import PrependToken

RngState = tuple[torch.Tensor, torch.Tensor | None]  # CPU and CUDA generator states
ATTENTION = "lockstep_sdpa"  # SDPA with per-run attention-dropout masks


class LockstepError(UserError, ValueError):
    """A configuration that cannot train in lockstep; the message names the way out."""


DEFAULT_LAUNCHER = "run it with the default launcher (drop hydra/launcher=lockstep)"


class Single:
    """One run: its own model, torch's gradient clipping, gradients freed after each step."""

    runs = 1

    def __init__(self, model: nn.Module):
        self.model = model
        self.models = [model]
        self.rows = 0  # rows of the model's current batch
        for module in model.modules():
            if type(module) in FORWARDS and type(module) not in ALONE_AS_IS and _trains(module):
                _as_blocks(module, 1, self)
        model.register_forward_pre_hook(self._enter)

    def _enter(self, module: nn.Module, args: tuple) -> None:
        self.rows = args[0].shape[0]

    def clip(self, max_norm: float) -> None:
        params = [p for p in self.model.parameters() if p.requires_grad]
        nn.utils.clip_grad_norm_(params, max_norm, foreach=True)

    def step(self, optimizers: Sequence[torch.optim.Optimizer], active: Sequence[bool]) -> None:
        if active[0]:
            optimizers[0].step()

    def zero_grad(self) -> None:
        self.model.zero_grad(set_to_none=True)

    def close(self) -> None:
        """Nothing to release."""

    def own_rng(self, run: int) -> contextlib.AbstractContextManager:
        """The run's random state is the global one."""
        return contextlib.nullcontext()


class Stacked:
    """R run models trained as one carrier model (see the module docstring)."""

    def __init__(self, models: Sequence[nn.Module], rng_states: Sequence[RngState]):
        self.models = list(models)
        self.runs = len(models)
        self.generators = [_generators(state) for state in rng_states]
        self.rows = 0  # rows of the carrier's current batch (R · per-run rows)
        self.pads: list[int] = [0] * self.runs  # each run's padding in this batch's sequences
        self._pool: ThreadPoolExecutor | None = None  # draws dropout masks beside this thread
        self.params: list[nn.Parameter] = []  # the stacked trainable parameters
        self._slot: dict[int, int] = {}  # id(a run's parameter) -> its index in self.params
        self._grads: list[torch.Tensor] | None = None  # this step's, once backward ran
        self._clip_order: list[int] = []
        self._fused: list[FusedStep | None] | None = None  # built at the first step
        self._counts = torch.zeros(0)  # Adam's step counters, (runs, parameters)
        self._active: tuple[bool, ...] = ()
        self._advance = torch.zeros(0)
        shared = {id(t): t for m in models[:1] for t in [*m.parameters(), *m.buffers()]}
        self.model = copy.deepcopy(models[0], memo=dict(shared))  # modules copied, tensors shared
        self.model.register_forward_pre_hook(self._enter)
        self.model.register_forward_hook(self._exit)
        run_modules = [dict(m.named_modules()) for m in models]
        for name, module in self.model.named_modules():
            names = list(module._parameters)
            if not names:
                continue
            values = [[getattr(rm[name], n) for rm in run_modules] for n in names]
            blocks = _blocks(values)
            trains = _trains(module)
            if trains and type(module) not in FORWARDS:
                raise LockstepError(
                    f"lockstep cannot stack {type(module).__name__} ({name}): {DEFAULT_LAUNCHER}"
                )
            for param_name, per_run in zip(names, values, strict=True):
                setattr(module, param_name, self._stack(per_run, blocks))
            if trains or (blocks > 1 and type(module) is nn.Embedding):
                _as_blocks(module, blocks, self)
            elif blocks > 1:  # frozen, one value per block of runs (random backbones per seed)
                size = self.runs // blocks
                module.blocks = blocks
                module.block_modules = [run_modules[b * size][name] for b in range(blocks)]
                module.forward = types.MethodType(_frozen_blocks, module)
        for name, module in self.model.named_modules():
            if getattr(module, "draws_random", False):  # e.g. data augmentation in forward
                raise LockstepError(
                    f"lockstep cannot give each run its own random draws in {name} "
                    f"({type(module).__name__}): {DEFAULT_LAUNCHER}"
                )
            if isinstance(module, nn.Dropout):
                module.layout = self
                module.forward = types.MethodType(_dropout, module)
            config = getattr(module, "config", None)
            if isinstance(config, PretrainedConfig) and config._attn_implementation == "sdpa":
                config._attn_implementation = ATTENTION

    def _stack(self, per_run: list[nn.Parameter], blocks: int) -> nn.Parameter:
        """One parameter of `blocks` blocks; each run's parameter becomes a view of its block."""
        first = per_run[0]
        if blocks == 1:
            for param in per_run[1:]:
                param.data = first.data
            return first
        size = self.runs // blocks
        stacked = torch.stack([per_run[b * size].detach() for b in range(blocks)])
        param = nn.Parameter(stacked, requires_grad=first.requires_grad)
        for run, value in enumerate(per_run):
            value.data = param.data[run // size]
            if param.requires_grad:  # trainable: one block per run
                self._slot[id(value)] = len(self.params)
        if param.requires_grad:
            self.params.append(param)
        return param

    def _enter(self, module: nn.Module, args: tuple) -> None:
        x, lengths = args[0], args[1] if len(args) > 1 else None
        self.rows = x.shape[0]
        self.pads = [0] * self.runs
        if lengths is not None and self.model.training:  # only dropout masks depend on pads
            widths = lengths.view(self.runs, -1).amax(dim=1)
            self.pads = (x.shape[1] - widths).tolist()  # each run's batch was trimmed to its width
        _RUNNING.set(self)

    def _exit(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        _RUNNING.set(None)

    @contextlib.contextmanager
    def own_rng(self, run: int) -> Iterator[None]:
        """Within the block, the global random state is run `run`'s own."""
        cpu, cuda = self.generators[run]
        outer = rng_state()
        _set_rng((cpu.get_state(), None if cuda is None else cuda.get_state()))
        try:
            yield
        finally:
            inner = rng_state()
            cpu.set_state(inner[0])
            if cuda is not None:
                cuda.set_state(inner[1])
            _set_rng(outer)

    def keep_masks(self, x: torch.Tensor, keep: float, sequence_dims: tuple[int, ...] = ()):
        """Each run's Bernoulli(`keep`) mask of its rows of `x`, drawn from its own generator as
        its lone run's dropout draws it (`empty_like(input).bernoulli_(keep)`), run-major as the
        rows. A run whose batch was padded to the group's longest sequence draws the mask of its
        own width (dims `sequence_dims` of `x`, less its pad) and gets zeros over the pad.

        On the CPU, where a draw is one serial loop, the runs' draws are split among threads:
        each run's mask comes from its own generator, so every split gives the same masks."""
        shape = (x.shape[0] // self.runs, *x.shape[1:])
        padded = sequence_dims if any(self.pads) else ()
        fill = torch.zeros if padded else torch.empty
        masks = fill((self.runs, *shape), dtype=x.dtype, device=x.device)

        def draw(runs: range) -> None:
            for run in runs:
                self._draw(masks[run], keep, run, padded)

        self._split(draw, threads=1 if x.device.type == "cuda" else torch.get_num_threads())
        return masks.view(x.shape)

    def _draw(self, mask: torch.Tensor, keep: float, run: int, sequence_dims: tuple[int, ...]):
        generator = self.generators[run][1 if mask.device.type == "cuda" else 0]
        pad = self.pads[run]
        if not pad or not sequence_dims:
            mask.bernoulli_(keep, generator=generator)
            return
        own = [n - pad if d in sequence_dims else n for d, n in enumerate(mask.shape)]
        drawn = torch.empty(own, dtype=mask.dtype, device=mask.device)
        mask[tuple(slice(n) for n in own)] = drawn.bernoulli_(keep, generator=generator)

    def _split(self, work: Callable[[range], None], threads: int) -> None:
        """`work(runs)` over every run, the runs cut into `threads` contiguous parts done at
        once (torch releases the GIL in its kernels); the first part in this thread."""
        parts = min(threads, self.runs)
        cuts = [self.runs * i // parts for i in range(parts + 1)]
        if parts > 1 and self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=parts - 1)
        bounds = zip(cuts[1:-1], cuts[2:], strict=True)
        futures = [self._pool.submit(work, range(a, b)) for a, b in bounds]
        work(range(cuts[0], cuts[1]))
        for future in futures:
            future.result()

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
            self._clip_order = [self._slot[id(p)] for p in _trainable(self.models[0])]
        norms = [torch.linalg.vector_norm(grads[j].flatten(1), dim=1) for j in self._clip_order]
        total = torch.linalg.vector_norm(torch.stack(norms, dim=1), dim=1)
        coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for grad in grads:
            grad.mul_(coef.view(-1, *[1] * (grad.dim() - 1)))

    @torch.no_grad()
    def step(self, optimizers: Sequence[torch.optim.Optimizer], active: Sequence[bool]) -> None:
        """One optimizer step of each active run; a stopped run does not update.

        Runs with fused Adam or SGD call torch's fused kernel directly on their own tensors
        (`FusedStep`: bit for bit their `optimizer.step()`, without its per-call Python work);
        Adam's step counters of all runs are one (runs, parameters) tensor, advanced in one op.
        Other optimizers take their own step on their parameters' gradient views.
        """
        if self._fused is None:
            width = max(len(_trainable(m)) for m in self.models)
            self._counts = torch.zeros(self.runs, width, device=self.params[0].device)
            self._fused = [
                FusedStep.of(opt, steps, self._slot)
                for opt, steps in zip(optimizers, self._counts, strict=True)
            ]
        if self._active != tuple(active):
            self._active = tuple(active)
            adam = [bool(a and f and f.adam) for a, f in zip(active, self._fused, strict=True)]
            self._advance = torch.tensor(adam, dtype=torch.float32, device=self._counts.device)
            self._advance = self._advance.unsqueeze(1)
        self._counts.add_(self._advance)
        by_run = list(zip(*(g.unbind(0) for g in self.grads()), strict=True))  # [run][slot]
        for r, (optimizer, fused) in enumerate(zip(optimizers, self._fused, strict=True)):
            if not active[r]:
                continue
            grads = by_run[r]
            if fused is not None:
                fused(grads)
                continue
            for group in optimizer.param_groups:
                for param in group["params"]:
                    param.grad = grads[self._slot[id(param)]]
            optimizer.step()

    def zero_grad(self) -> None:
        """Gradients freed: the next backward hands each stacked parameter a new gradient (no
        zero fill, no accumulation into a kept buffer)."""
        for param in self.params:
            param.grad = None
        self._grads = None

    def close(self) -> None:
        """Stop the threads that draw dropout masks (a sweep builds many layouts)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


Layout = Single | Stacked


class FusedStep:
    """One run's optimizer step as direct calls of torch's fused kernel, one per parameter group,
    on the optimizer's own state tensors: `torch._fused_adam_` / `torch._fused_sgd_` get the
    tensors and hyper-parameters that `Adam(fused=True).step()` / `SGD(fused=True).step()` pass
    them, so the update is bit for bit the optimizer's.

    Gradients come per call, indexed by slot (`slots`: id(parameter) -> slot). Adam's
    per-parameter step counters become the elements of `steps` (state["step"] is a view of one
    element: still one counter per parameter, as in torch); the caller advances them.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, steps: torch.Tensor, slots: dict):
        self.adam = isinstance(optimizer, torch.optim.Adam)
        self.groups: list[tuple[dict, list[int], list[list[torch.Tensor]]]] = []
        self.first = False  # SGD with momentum: the buffers are filled by the first step
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for p, counter in zip(params, steps, strict=False):
            state = optimizer.state[p]
            if self.adam:
                if not state:  # as Adam._init_group creates it
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                else:
                    counter.copy_(state["step"])
                state["step"] = counter
        for group in optimizer.param_groups:
            params = list(group["params"])
            states = [optimizer.state[p] for p in params]
            if self.adam:
                moments = [[s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]]
                lists = [params, *moments, [s["step"] for s in states]]
            else:
                buffers = [s.get("momentum_buffer") for s in states]
                if group["momentum"] != 0 and all(b is None for b in buffers):
                    buffers = [torch.empty_like(p) for p in params]  # as _fused_sgd makes them
                    for state, buffer in zip(states, buffers, strict=True):
                        state["momentum_buffer"] = buffer
                    self.first = True
                lists = [params, [] if group["momentum"] == 0 else buffers]
            self.groups.append((group, [slots[id(p)] for p in params], lists))

    @classmethod
    def of(
        cls, optimizer: torch.optim.Optimizer, steps: torch.Tensor, slots: dict
    ) -> FusedStep | None:
        """The fused step of `optimizer`, or None where it would not be exactly its own step:
        other optimizers, unfused or tensor-LR groups, AMSGrad, parameters without a slot, mixed
        devices or dtypes, step hooks."""
        if type(optimizer) not in (torch.optim.Adam, torch.optim.SGD):
            return None
        if optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks:
            return None
        hooks = torch_optimizer
        if hooks._global_optimizer_pre_hooks or hooks._global_optimizer_post_hooks:
            return None
        kinds = set()
        for group in optimizer.param_groups:
            if not group.get("fused") or group.get("differentiable") or group.get("capturable"):
                return None
            if isinstance(group["lr"], torch.Tensor) or group.get("amsgrad"):
                return None
            if group.get("decoupled_weight_decay"):
                return None
            if isinstance(optimizer, torch.optim.Adam) and any(
                isinstance(b, torch.Tensor) for b in group["betas"]
            ):
                return None
            for p in group["params"]:
                if id(p) not in slots:
                    return None
                kinds.add((p.device, p.dtype))
        if len(kinds) != 1 or getattr(optimizer, "grad_scale", None) is not None:
            return None
        return cls(optimizer, steps, slots)

    def __call__(self, grads: Sequence[torch.Tensor]) -> None:
        """One step with the run's gradients `grads` (by slot)."""
        for group, slots, lists in self.groups:
            group_grads = [grads[j] for j in slots]
            if self.adam:
                params, exp_avgs, exp_avg_sqs, steps = lists
                beta1, beta2 = group["betas"]
                torch._fused_adam_(
                    params, group_grads, exp_avgs, exp_avg_sqs, [], steps, lr=group["lr"],
                    beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
                    eps=group["eps"], amsgrad=False, maximize=group["maximize"],
                )  # fmt: skip
            else:
                params, buffers = lists
                torch._fused_sgd_(
                    params, group_grads, buffers, weight_decay=group["weight_decay"],
                    momentum=group["momentum"], lr=group["lr"], dampening=group["dampening"],
                    nesterov=group["nesterov"], maximize=group["maximize"],
                    is_first_step=self.first,
                )  # fmt: skip
        self.first = False


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def build(models: Sequence[nn.Module], rng_states: Sequence[RngState]) -> Layout:
    """The layout of `models`: the model itself for one run, else the runs stacked.

    `rng_states[r]`: the random state run r's lone run would start training with (`rng_state()`
    right after building its model and optimizer).
    """
    return Single(models[0]) if len(models) == 1 else Stacked(models, rng_states)


def rng_state() -> RngState:
    """The global random state (CPU, and CUDA when present)."""
    return torch.get_rng_state(), torch.cuda.get_rng_state() if torch.cuda.is_available() else None


def _generators(state: RngState) -> tuple[torch.Generator, torch.Generator | None]:
    cpu = torch.Generator()
    cpu.set_state(state[0])
    if state[1] is None:
        return cpu, None
    cuda = torch.Generator(device="cuda")
    cuda.set_state(state[1])
    return cpu, cuda


def _set_rng(state: RngState) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1])


MAX_RUNS = 64  # beyond this, a CPU step is compute-bound anyway and a GPU batch large
ACTIVATION_FLOATS = 24  # floats kept for backward per token, layer and hidden unit (rough)
ATTENTION_FLOATS = 4  # per query-key pair, head and layer on SDPA's math path (scores, probs,…)
ATTENTION_DROPOUT = ("attn_pdrop", "attention_probs_dropout_prob", "attention_dropout")


def max_runs(
    model: nn.Module, batch_size: int, seq_len: int, device: torch.device, frozen_shared: bool
) -> int:
    """How many runs of `model` fit in half the free memory of `device`, at most `MAX_RUNS`.

    A run costs its trainable parameters four times (weights, gradients, two Adam moments), its
    frozen parameters once unless `frozen_shared` (pretrained; random ones are counted per run,
    an upper bound as runs of one seed share them), and its activations: batch · tokens · hidden
    · layers · ACTIVATION_FLOATS. With attention dropout, attention takes SDPA's math path in
    lockstep, which keeps L² probabilities: batch · heads · tokens² · layers · ATTENTION_FLOATS.
    """
    config = model.backbone.config
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    layers = config.num_hidden_layers
    activations = ACTIVATION_FLOATS * batch_size * seq_len * config.hidden_size * layers
    if any(getattr(config, key, 0) for key in ATTENTION_DROPOUT):
        heads = config.num_attention_heads
        activations += ATTENTION_FLOATS * batch_size * heads * seq_len**2 * layers
    per_run = 4 * (4 * trainable + (0 if frozen_shared else frozen) + activations)
    return max(1, min(MAX_RUNS, int(0.5 * _free_memory(device) // per_run)))


def _free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30  # unknown: assume 8 GiB


@torch.no_grad()
def share_frozen(model: nn.Module, seen: Sequence[nn.Module]) -> None:
    """Make `model`'s frozen parameters views of equal ones in `seen` models (frees the copies).

    Called as each run's model is built, so R pretrained backbones never sit in memory at once.
    """
    for other in seen:
        mine, theirs = dict(model.named_parameters()), dict(other.named_parameters())
        for name, param in mine.items():
            ref = theirs.get(name)
            if (
                not param.requires_grad
                and ref is not None
                and param.data_ptr() != ref.data_ptr()
                and param.shape == ref.shape
                and torch.equal(param, ref)
            ):
                param.data = ref.data


def _blocks(values: list[list[nn.Parameter]]) -> int:
    """How many distinct blocks a module's parameters need: 1 when frozen and equal in every
    run; the number of distinct frozen values when runs with equal values are contiguous and
    equally many; else one per run."""
    runs = len(values[0])
    if any(per_run[0].requires_grad for per_run in values):
        return runs
    labels: list[int] = []
    firsts: list[int] = []  # the first run of each distinct value
    for run in range(runs):
        match = next((i for i, f in enumerate(firsts) if _all_equal(values, run, f)), None)
        if match is None:
            firsts.append(run)
        labels.append(len(firsts) - 1 if match is None else match)
    size = runs // len(firsts)
    contiguous = labels == [b for b in range(len(firsts)) for _ in range(size)]
    return len(firsts) if contiguous else runs


def _all_equal(values: list[list[nn.Parameter]], run: int, other: int) -> bool:
    return all(
        p[run].data_ptr() == p[other].data_ptr() or torch.equal(p[run], p[other]) for p in values
    )


def _as_blocks(module: nn.Module, blocks: int, layout: Single | Stacked) -> None:
    """`module` computes in block form with `blocks` blocks (1: its parameters are not stacked).

    A lone run's trainable layers compute in this form too, so each block of a stack runs the
    very kernels of its lone run (a batched matmul over K blocks gives each block the bits it
    gives alone, where `addmm` vs `bmm` can differ in the last bit, and such bits grow into
    different runs over a few hundred steps at a high LR). LayerNorm's block form calls torch's
    own kernel per block, so a lone run keeps the plain module (`ALONE_AS_IS`). Frozen layers
    keep torch's forward in both layouts: their rows are independent of the batch around them."""
    module.blocks = blocks
    module.layout = layout
    module.forward = types.MethodType(FORWARDS[type(module)], module)


def _trains(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module._parameters.values() if p is not None)


def _frozen_blocks(self: nn.Module, x: torch.Tensor, *args: object) -> torch.Tensor:
    """A frozen module whose weights differ per block of runs: each block's rows through the
    module of one of its runs, as a lone run computes them."""
    parts = x.reshape(self.blocks, -1, *x.shape[1:]).unbind(0)
    return torch.cat([m(part, *args) for m, part in zip(self.block_modules, parts, strict=True)])


def _stacked(module: nn.Module, tensor: torch.Tensor | None) -> torch.Tensor | None:
    """`tensor` of `module` with its leading block axis (added for an unstacked module)."""
    return tensor if tensor is None or module.blocks > 1 else tensor.unsqueeze(0)


def _matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight[k] + bias[k] for each block k of x's rows; weight is (K, in, out)."""
    shape = x.shape
    blocks = weight.shape[0]
    x = x.reshape(blocks, -1, shape[-1])
    out = torch.bmm(x, weight) if bias is None else torch.baddbmm(bias.unsqueeze(1), x, weight)
    return out.reshape(*shape[:-1], weight.shape[-1])


def _linear(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return _matmul(x, _stacked(self, self.weight).transpose(1, 2), _stacked(self, self.bias))


def _conv1d(self: Conv1D, x: torch.Tensor) -> torch.Tensor:
    return _matmul(x, _stacked(self, self.weight), _stacked(self, self.bias))


def _layer_norm(self: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """Each block's rows through `F.layer_norm` with the block's scale and shift: torch's fused
    kernel, as its lone run calls it (an affine map after the normalisation would round apart,
    and its backward would sum the scale's gradient in another order)."""
    weights = [None] * self.blocks if self.weight is None else self.weight.unbind(0)
    biases = [None] * self.blocks if self.bias is None else self.bias.unbind(0)
    parts = x.reshape(self.blocks, -1, *x.shape[1:]).unbind(0)
    return torch.cat(
        [
            F.layer_norm(part, self.normalized_shape, weight, bias, self.eps)
            for part, weight, bias in zip(parts, weights, biases, strict=True)
        ]
    )


def _embedding(self: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """Per-block lookups; ids of one row (positions) broadcast over every run's rows."""
    weight = _stacked(self, self.weight)
    blocks, vocab, hidden = weight.shape
    if ids.shape[0] == 1:
        rows = self.layout.rows
        out = weight[:, ids[0]].unsqueeze(1).expand(blocks, rows // blocks, *ids.shape[1:], -1)
        out = out.reshape(rows, *ids.shape[1:], hidden)
    else:
        offsets = torch.arange(blocks, device=ids.device) * vocab
        shifted = (ids.reshape(blocks, -1) + offsets.unsqueeze(1)).reshape(ids.shape)
        out = F.embedding(shifted, weight.reshape(blocks * vocab, hidden))
    if self.padding_idx is not None:  # the padding row gets no gradient, as in nn.Embedding
        out = out.masked_fill((ids == self.padding_idx).unsqueeze(-1), 0.0)
    return out


def _prepend_token(self: PrependToken, x: torch.Tensor) -> torch.Tensor:
    """Each block's own learned token in front of its runs' sequences."""
    embeds = self.layer(x)
    rows, length, hidden = embeds.shape
    token = _stacked(self, self.token).to(embeds.dtype)[:, None, None, :]
    token = token.expand(self.blocks, -1, 1, hidden)
    token = token.expand(self.blocks, rows // self.blocks, 1, hidden).reshape(rows, 1, hidden)
    return torch.cat([token, embeds], dim=1)


def _dropout(self: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
    """Each run's rows dropped with the run's own random state (its lone run's masks)."""
    if not self.training or self.p == 0:
        return x
    sequence = (1,) if x.dim() == 3 else ()  # (rows, sequence, features) or (rows, features)
    return x * self.layout.keep_masks(x, 1 - self.p, sequence).div_(1 - self.p)


def _attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """Transformers' SDPA attention; with attention dropout, the math path torch takes on CPU
    (`_scaled_dot_product_attention_math`, op for op, so a lone run's bits) with each run's rows
    dropped by the mask its lone run draws (`at::dropout` on the probabilities)."""
    layout = _RUNNING.get()
    if dropout == 0.0 or layout is None or hasattr(module, "num_key_value_groups"):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
            is_causal=is_causal, **kwargs,
        )  # fmt: skip
    if attention_mask is not None and attention_mask.ndim == 4:
        attention_mask = attention_mask[:, :, :, : key.shape[-2]]
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    is_causal = query.shape[2] > 1 and attention_mask is None and is_causal
    root = math.sqrt(scaling if scaling is not None else 1 / math.sqrt(query.shape[-1]))
    scores = (query * root) @ (key.transpose(-2, -1) * root)  # q and k scaled, as torch does
    if is_causal:
        length, source = query.shape[-2], key.shape[-2]
        attention_mask = torch.ones(length, source, dtype=torch.bool, device=query.device).tril()
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:  # as torch converts it: 0 kept, -inf dropped
            attention_mask = torch.where(attention_mask, 0.0, float("-inf")).to(scores.dtype)
        scores.add_(attention_mask)
    probs = torch.ops.aten._safe_softmax(scores, -1)
    probs = probs * layout.keep_masks(probs, 1 - dropout, (2, 3)).div_(1 - dropout)
    return (probs @ value).transpose(1, 2).contiguous(), None


_RUNNING: ContextVar[Stacked | None] = ContextVar("lockstep_running", default=None)
AttentionInterface.register(ATTENTION, _attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)

# Layers whose block form computes each block as torch's own forward does: a lone run keeps it.
ALONE_AS_IS = (nn.LayerNorm,)
FORWARDS: dict[type, Callable[..., torch.Tensor]] = {
    nn.Linear: _linear,
    Conv1D: _conv1d,
    nn.LayerNorm: _layer_norm,
    nn.Embedding: _embedding,
    PrependToken: _prepend_token,
}
