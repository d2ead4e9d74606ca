"""The search space: Hydra's override grammar as Optuna distributions (hydra-optuna-sweeper's
mapping, so commands written for it sample the same spaces).

| override | distribution |
|---|---|
| `interval(a, b)` | float in [a, b] (int when both bounds are ints) |
| `tag(log, interval(a, b))` | the same on a log scale |
| `choice(x, y, ...)`, `shuffle(range(...))` | categorical over the values |
| `range(a, b[, step])` | int (float when a bound or the step is) from a to b by step |
| a plain value (`model=tiny_gpt2`) | fixed: passed to every trial as is |
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    RangeSweep,
    Transformer,
)
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from xmodal_ft.errors import UserError


def parse(
    params: Mapping[str, Any] | None, arguments: Iterable[str]
) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """The distributions to sample and the fixed values, from `hydra.sweeper.params` and then
    the command line's overrides (a key on both: the command line wins)."""
    overrides = [f"{key}={value}" for key, value in (params or {}).items()]
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides([*overrides, *arguments]):
        name = override.get_key_element()
        space.pop(name, None)
        fixed.pop(name, None)
        if override.is_sweep_override():
            space[name] = distribution(override)
        else:
            fixed[name] = override.get_value_element_as_str()
    return space, fixed


def distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override."""
    value = override.value()
    if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(Transformer.encode)))
    if isinstance(value, RangeSweep):
        assert value.start is not None and value.stop is not None
        if any(isinstance(x, float) for x in (value.start, value.stop, value.step)):
            return FloatDistribution(value.start, value.stop, step=value.step)
        return IntDistribution(int(value.start), int(value.stop), step=int(value.step))
    if isinstance(value, IntervalSweep):
        assert value.start is not None and value.end is not None
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(value.start, value.end, log=log)
    raise UserError(
        f"{override.input_line}: the Optuna sweeper samples interval(...), "
        "tag(log, interval(...)), choice(...) and range(...), or takes a plain value"
    )


def grid(space: Mapping[str, BaseDistribution]) -> dict[str, list[Any]]:
    """Each parameter's values for `sampler=grid` (discrete distributions only)."""
    return {name: _grid_values(name, dist) for name, dist in space.items()}


def _grid_values(name: str, dist: BaseDistribution) -> list[Any]:
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, IntDistribution | FloatDistribution) and dist.step and not dist.log:
        count = int((dist.high - dist.low) // dist.step)  # range(a, b): b left out, as Hydra's
        return [dist.low + i * dist.step for i in range(count)]
    raise UserError(
        f"hydra.sweeper.params.{name}: hydra/sweeper/sampler=grid needs discrete values:"
        f" choice(...) or range(...), not {dist}"
    )
