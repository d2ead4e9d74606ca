"""Learning-rate schedules as pure functions of the step: a multiplier of each group's base LR."""

from __future__ import annotations

from collections.abc import Callable

Schedule = Callable[[int], float]


def constant() -> Schedule:
    """The base LR at every step."""
    return lambda step: 1.0


def slanted_triangular(total_steps: int, cut_frac: float = 0.1, ratio: float = 32.0) -> Schedule:
    """ULMFiT's slanted triangular LR (Howard & Ruder 2018, eq. 3) as a multiplier of the peak.

    A linear rise over the first `cut = floor(total_steps * cut_frac)` steps from 1/ratio to 1,
    then a linear decay back to 1/ratio at `total_steps`. ULMFiT writes the decay length as
    cut * (1/cut_frac - 1), which equals total_steps - cut when cut_frac * total_steps is whole;
    using total_steps - cut lands exactly on the floor at the end when it is not.
    """
    if total_steps < 2:
        raise ValueError(
            f"slanted_triangular needs a budget of >= 2 steps (max_steps), got {total_steps}"
        )
    if not 0 < cut_frac < 1:
        raise ValueError(f"scheme.cut_frac={cut_frac} must lie in (0, 1) (ULMFiT: 0.1)")
    if not ratio >= 1:
        raise ValueError(f"scheme.ratio={ratio} must be >= 1 (ULMFiT: 32)")
    cut = max(1, min(total_steps - 1, int(total_steps * cut_frac)))

    def scale(step: int) -> float:
        p = step / cut if step < cut else 1 - (step - cut) / (total_steps - cut)
        return (1 + max(p, 0.0) * (ratio - 1)) / ratio

    return scale


SCHEDULES: dict[str, Callable[[int, float, float], Schedule]] = {
    "constant": lambda total_steps, cut_frac, ratio: constant(),
    "slanted_triangular": slanted_triangular,
}


def build(name: str, total_steps: int, cut_frac: float, ratio: float) -> Schedule:
    """The schedule called `name` over `total_steps` steps."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown scheme.schedule {name!r}; choose one of: {', '.join(SCHEDULES)}")
    return SCHEDULES[name](total_steps, cut_frac, ratio)
