"""Fault injection (benchmarks/faults.py): a tiny sweep under each launcher, and two Optuna
workers on one journal file and on one SQLite file, survive seeded random faults (a killed or
stopped worker, a killed launcher, EIO in lease writes, a duplicate launch, a relaunch) with
every run trained once, to the numbers of uninterrupted runs, no process ending on a traceback,
every command ending within its bound and every study ending with its `n_trials` complete
trials. Three scenarios run by default; the full matrix (every launcher under every fault) is
`slow`. A launcher is added to the suite by adding it to `faults.LAUNCHERS`."""

from __future__ import annotations

import os

import pytest
from hydra import compose, initialize_config_dir

from benchmarks import faults
from conftest import CONF
from xmodal_ft import run

QUICK = {
    ("basic", "kill-launcher", 0),
    ("lockstep, 2 CPU devices", "kill-worker", 0),
    ("Optuna, 2 workers, journal file", "kill-worker", 0),
}
MATRIX = [(launcher, fault, 0) for launcher in faults.LAUNCHERS for fault in faults.FAULTS]
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[float, int], dict]:
    """Each run of the sweep trained alone in this process, as an uninterrupted sweep trains
    it: results by (lr, seed) (an Optuna trial trains some of these runs)."""
    root = tmp_path_factory.mktemp("uninterrupted")
    for lr in faults.LRS:
        for seed in faults.SEEDS:
            with initialize_config_dir(config_dir=CONF, version_base="1.3"):
                cfg = compose("config", overrides=[*faults.SWEEP, f"lr={lr}", f"seed={seed}"])
            run(cfg, root / f"{lr}_{seed}")
    return faults.results_under(root)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="finds workers in /proc")
@pytest.mark.parametrize(
    ("launcher", "fault", "seed"),
    [pytest.param(*case, marks=() if case in QUICK else pytest.mark.slow) for case in MATRIX],
)
def test_a_sweep_under_a_fault_trains_every_run_once_to_the_uninterrupted_numbers(
    tmp_path, uninterrupted, launcher: str, fault: str, seed: int
) -> None:
    if launcher != "basic" and CORES < 2:
        pytest.skip("two one-core devices need two cores")
    outcome = faults.scenario(launcher, fault, seed, tmp_path, uninterrupted)
    assert outcome.problems == [], outcome
    assert outcome.injected >= 1
    assert (outcome.lost, outcome.twice, outcome.crashed, outcome.hangs) == (0, 0, 0, 0)
    assert (outcome.differ, outcome.study_off) == (0, 0)
