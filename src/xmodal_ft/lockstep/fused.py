"""A run's optimizer step as direct calls of torch's fused Adam/SGD kernels on its own tensors:
the update `optimizer.step()` makes, bit for bit, without its per-call Python work."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.optim import optimizer as torch_optimizer


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
