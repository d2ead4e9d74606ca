"""Layer groups of a wrapped backbone, found generically: the largest `nn.ModuleList` is the stack.

Groups run bottom to top: `bottom` (the input layer and every backbone parameter registered
before the stack: token/position embeddings, their norm), `layer.0` … `layer.{L-1}`, and `top`
(backbone parameters registered after the stack, e.g. GPT-2's final `ln_f`, and the output
layer). GPT-2's stack is `h`, BERT's `encoder.layer`; nothing here names a model.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass
class LayerGroup:
    """One layer group: a name and its parameters by full name."""

    name: str
    params: dict[str, nn.Parameter]


def find_layers(backbone: nn.Module) -> tuple[str, nn.ModuleList]:
    """The backbone's stack of layers: the non-empty `nn.ModuleList` holding the most parameters."""
    stacks = [
        (name, module)
        for name, module in backbone.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) > 0
    ]
    if not stacks:
        raise ValueError(
            f"{type(backbone).__name__} has no nn.ModuleList of layers: layer-wise schemes "
            "(discriminative, gradual_unfreeze) and adapters need one; use scheme=fixed"
        )
    return max(stacks, key=lambda item: sum(p.numel() for p in item[1].parameters()))


def layer_groups(model: nn.Module) -> list[LayerGroup]:
    """All parameters of a model with `.backbone` (and optional `.input_layer`), bottom to top."""
    _, stack = find_layers(model.backbone)
    layer_of = {id(p): i for i, layer in enumerate(stack) for p in layer.parameters()}
    below = set()
    for param in model.backbone.parameters():
        if id(param) in layer_of:
            break
        below.add(id(param))
    input_layer = getattr(model, "input_layer", None)
    if input_layer is not None:
        below.update(id(p) for p in input_layer.parameters())
    groups = [LayerGroup("bottom", {})]
    groups += [LayerGroup(f"layer.{i}", {}) for i in range(len(stack))]
    groups.append(LayerGroup("top", {}))
    for name, param in model.named_parameters():
        if id(param) in layer_of:
            index = 1 + layer_of[id(param)]
        else:
            index = 0 if id(param) in below else len(groups) - 1
        groups[index].params[name] = param
    return groups
