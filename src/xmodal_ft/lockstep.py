"""R runs of one configuration stacked into one carrier model (the `Stacked` layout).

`stack(models)` turns R run models (each built from its own seed, exactly as a sequential run
builds it) into one carrier model whose batch is the runs' batches, run-major: rows
[r·B, (r+1)·B) belong to run r. The carrier is a copy of run 0's modules sharing its tensors, in
which `blocks.swap` puts stacked layers (`blocks`; `print(stacked.model)` names them): trainable
leaf modules compute with tensors stacked on a leading block axis, as a lone run's compute with
one block (`layout.Single`), so each run's numbers are its lone run's bit for bit on fixed-length
inputs. Frozen modules equal in every run stay single and take all R·B rows as one batch (the
pretrained backbone under FPT); frozen ones whose values differ per block of runs (random
backbones of several seeds) become `FrozenBlocks`: each block's rows through one of its runs'
modules; attention has no parameters and runs unchanged.

Each run model's parameters become views of the stacked tensors, so every run keeps its own
optimizer (its own LR and Adam state), checkpoint and best-weights copies, all built on its own
model as a lone run would. One backward fills the stacked gradients; clipping and the optimizer
step then work per run on slices of them: the step calls torch's fused Adam/SGD kernel on each
run's own tensors (`FusedStep`: the update `optimizer.step()` makes, bit for bit, without its
per-call Python work), so R runs cost R kernel calls and one step-counter update per step. Where
torch lacks those kernels, each run takes its own `optimizer.step()` on its views (as exact).

Randomness is per run too: each run has its own generator (in the state its lone run would start
training with), and dropout (`blocks.RunDropout`, and attention dropout through SDPA's math path
written out, the attention function registered with transformers when a stack is built) draws
each run's masks from it for that run's rows, so a lockstep run draws exactly the masks of its
lone run while the ops run once on the whole batch.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar

import torch
from torch import nn
from torch.optim import optimizer as torch_optimizer
from transformers import AttentionInterface, PretrainedConfig
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from xmodal_ft import blocks
from xmodal_ft.errors import DEFAULT_LAUNCHER, LockstepError
from xmodal_ft.layout import RngState, Single, rng_state, trains

__all__ = ["DEFAULT_LAUNCHER", "LockstepError", "Single", "Stacked", "build", "rng_state"]
ATTENTION = "lockstep_sdpa"  # SDPA with per-run attention-dropout masks


class Stacked:
    """R run models trained as one carrier model (see the module docstring)."""

    def __init__(self, models: Sequence[nn.Module], rng_states: Sequence[RngState]):
        self.models = list(models)
        self.runs = len(models)
        self.generators = [_generators(state) for state in rng_states]
        self.pads: list[int] = [0] * self.runs  # each run's padding in this batch's sequences
        self._pool: ThreadPoolExecutor | None = None  # draws dropout masks beside this thread
        self.params: list[nn.Parameter] = []  # the stacked trainable parameters
        self._slot: dict[int, int] = {}  # id(a run's parameter) -> its index in self.params
        self._grads: list[torch.Tensor] | None = None  # this step's, once backward ran
        self._clip_order: list[int] = []
        self._fused: list[FusedStep | None] | None = None  # built at the first step
        self._counts = torch.zeros(0)  # Adam's step counters, (runs, parameters)
        self._advance = torch.zeros(0)
        _refuse_random_draws(models[0])
        self.model = _carrier(models[0])
        self.rows = blocks.Rows()  # the carrier's batch rows (R · per-run rows)
        self.rows.follow(self.model)
        self.model.register_forward_pre_hook(self._enter)
        self.model.register_forward_hook(self._exit)
        self._run_modules = [dict(m.named_modules()) for m in models]
        blocks.swap(self.model, self._block_form)
        del self._run_modules
        _use_attention(self.model)
        for model in self.models:  # each computes as its lone run (step-0 validation per seed)
            Single(model)

    def _block_form(self, name: str, module: nn.Module) -> nn.Module | None:
        """What computes carrier module `name` for every run (None: the module as it is)."""
        if isinstance(module, nn.Dropout):
            return blocks.RunDropout(module, self, self.runs)
        names = [n for n, p in module._parameters.items() if p is not None]
        if not names:
            return None
        values = [[getattr(rm[name], n) for rm in self._run_modules] for n in names]
        count = _blocks(values)
        trainable = trains(module)
        if trainable and not blocks.has_block_form(module):
            raise LockstepError(
                f"lockstep cannot stack {type(module).__name__} ({name}): {DEFAULT_LAUNCHER}"
            )
        params = {n: self._stack(per_run, count) for n, per_run in zip(names, values, strict=True)}
        if trainable or (count > 1 and type(module) is nn.Embedding):
            return blocks.block_form(module, params, count, self.rows)
        if count > 1:  # frozen, one value per block of runs (random backbones per seed)
            size = self.runs // count
            return blocks.FrozenBlocks([self._run_modules[b * size][name] for b in range(count)])
        return None

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
    def step(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        """One optimizer step of each run (a run that stops leaves the stack: `keep`).

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

    def keep(self, runs: Sequence[int]) -> Layout:
        """The layout of runs `runs` (indices here) alone; the others leave the stack, so each
        step computes only the runs kept. Their models, optimizers (Adam's step counters taken
        at the next step) and generators go on where they are; one run left trains as `Single`
        with its generator's state as the global one (the RNG its lone run draws from)."""
        models = [self.models[r] for r in runs]
        states = [
            (cpu.get_state(), None if cuda is None else cuda.get_state())
            for cpu, cuda in (self.generators[r] for r in runs)
        ]
        self.close()
        if len(runs) == 1:
            _set_rng(states[0])
            return Single(models[0])
        return Stacked(models, states)

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
        devices or dtypes, step hooks, a torch without the kernels."""
        if type(optimizer) not in (torch.optim.Adam, torch.optim.SGD):
            return None
        if fused_kernels() is None or _step_hooks(optimizer):
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
        adam, sgd = fused_kernels()
        for group, slots, lists in self.groups:
            group_grads = [grads[j] for j in slots]
            if self.adam:
                params, exp_avgs, exp_avg_sqs, steps = lists
                beta1, beta2 = group["betas"]
                adam(
                    params, group_grads, exp_avgs, exp_avg_sqs, [], steps, lr=group["lr"],
                    beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
                    eps=group["eps"], amsgrad=False, maximize=group["maximize"],
                )  # fmt: skip
            else:
                params, buffers = lists
                sgd(
                    params, group_grads, buffers, weight_decay=group["weight_decay"],
                    momentum=group["momentum"], lr=group["lr"], dampening=group["dampening"],
                    nesterov=group["nesterov"], maximize=group["maximize"],
                    is_first_step=self.first,
                )  # fmt: skip
        self.first = False


def fused_kernels() -> tuple[Callable[..., None], Callable[..., None]] | None:
    """torch's private fused Adam and SGD kernels (`torch._fused_adam_`, `torch._fused_sgd_`),
    or None where this torch has not both (each run then takes its own `optimizer.step()`)."""
    adam, sgd = getattr(torch, "_fused_adam_", None), getattr(torch, "_fused_sgd_", None)
    return None if adam is None or sgd is None else (adam, sgd)


def _step_hooks(optimizer: torch.optim.Optimizer) -> bool:
    """Whether step hooks (the optimizer's or global ones) would run in `optimizer.step()`; True
    where torch keeps them elsewhere than this version does (private attributes)."""
    places = [
        (optimizer, "_optimizer_step_pre_hooks"), (optimizer, "_optimizer_step_post_hooks"),
        (torch_optimizer, "_global_optimizer_pre_hooks"),
        (torch_optimizer, "_global_optimizer_post_hooks"),
    ]  # fmt: skip
    return any(getattr(owner, name, True) for owner, name in places)


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def build(models: Sequence[nn.Module], rng_states: Sequence[RngState]) -> Layout:
    """The layout of `models`: the model itself for one run, else the runs stacked.

    `rng_states[r]`: the random state run r's lone run would start training with (`rng_state()`
    right after building its model and optimizer).
    """
    return Single(models[0]) if len(models) == 1 else Stacked(models, rng_states)


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
    model: nn.Module,
    batch_size: int,
    seq_len: int,
    device: torch.device,
    frozen_shared: bool,
    memory_share: float = 1.0,
) -> int:
    """How many runs of `model` fit in half the free memory of `device` (of this process's
    `memory_share` of it, where workers share the device's memory), at most `MAX_RUNS`.

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
    free = memory_share * _free_memory(device)
    return max(1, min(MAX_RUNS, int(0.5 * free // per_run)))


def _free_memory(device: torch.device) -> int:
    if device.type == "cuda":  # the driver's free memory and the blocks torch caches unused
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + cached
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


def _use_attention(model: nn.Module) -> None:
    """`model`'s modules on SDPA attention take lockstep's (`_attention`), registered with
    transformers here."""
    AttentionInterface.register(ATTENTION, _attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    for module in model.modules():
        config = getattr(module, "config", None)
        if isinstance(config, PretrainedConfig) and config._attn_implementation == "sdpa":
            config._attn_implementation = ATTENTION


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
    dropped by the mask its lone run draws (`at::dropout` on the probabilities). Grouped
    key/value heads (`num_key_value_groups`) are repeated as that path repeats them."""
    layout = _RUNNING.get()
    if dropout == 0.0 or layout is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
            is_causal=is_causal, **kwargs,
        )  # fmt: skip
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = key.repeat_interleave(groups, -3), value.repeat_interleave(groups, -3)
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
    probs = safe_softmax(scores)
    probs = probs * layout.keep_masks(probs, 1 - dropout, (2, 3)).div_(1 - dropout)
    return (probs @ value).transpose(1, 2).contiguous(), None


def safe_softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim as SDPA's math path takes it: torch's private
    `aten._safe_softmax` (zeros, not NaN, for a row that masks every key) where torch has it,
    else the public softmax (which older torch's math path called)."""
    safe = getattr(torch.ops.aten, "_safe_softmax", None)
    return torch.softmax(scores, -1) if safe is None else safe(scores, -1)


_RUNNING: ContextVar[Stacked | None] = ContextVar("lockstep_running", default=None)
