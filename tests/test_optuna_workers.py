"""`hydra/sweeper=xmodal_optuna` (sweep=optuna): several workers on one storage fill one study of
`n_trials`, no trial runs twice, a dead worker's trial is retried with its parameters."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import time
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from optuna.distributions import LogUniformDistribution
from optuna.trial import TrialState, create_trial

from conftest import CONF
from hydra_plugins.xmodal_optuna_sweeper import _budget
from hydra_plugins.xmodal_optuna_sweeper._impl import SharedStudySweeper
from hydra_plugins.xmodal_optuna_sweeper._shared import SharedStudy, open_study
from test_sweeps import results, sweep
from xmodal_ft.errors import UserError

LR = LogUniformDistribution(1e-6, 1e-2)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def trial(number: int, **system_attrs) -> optuna.trial.FrozenTrial:
    made = create_trial(state=TrialState.COMPLETE, value=0.0, system_attrs=system_attrs)
    made.number = number
    return made


def test_budget_is_the_first_n_fresh_trials_in_number_order() -> None:
    trials = [trial(0), trial(1), trial(2, failed_trial=0), trial(3), trial(4)]
    assert [_budget.in_budget(trials, t.number, 3) for t in trials if _budget.is_fresh(t)] == [
        True,
        True,
        True,
        False,
    ]  # fresh trials 0, 1, 3 are the budget; retry 2 replaces trial 0 and does not count
    assert _budget.budget_left(trials[:3], 3) == 1
    assert _budget.budget_left(trials, 3) == 0
    assert _budget.retries([*trials, trial(5, failed_trial=0)], 0) == 2


def open_worker(url: str, **keys) -> SharedStudy:
    """One worker's view of the study at `url` (its own connection, as another process has)."""
    settings = dict(heartbeat_interval=1, grace_period=2)
    study, storage = open_study(
        url, study_name="s", sampler=optuna.samplers.RandomSampler(), directions=["maximize"],
        **settings,
    )  # fmt: skip
    return SharedStudy(study, storage, max_retry=keys.get("max_retry", 3), **settings)


def sweeper(n_trials: int) -> SharedStudySweeper:
    return SharedStudySweeper(
        sampler=optuna.samplers.RandomSampler(), direction="maximize", storage="sqlite://",
        study_name="s", n_trials=n_trials, n_jobs=1, max_failure_rate=0.0, search_space=None,
        custom_search_space=None, params=None, heartbeat_interval=1, grace_period=2,
        max_retry=3, wait_for_others=True,
    )  # fmt: skip


def ask_until_done(url: str, n_trials: int, start: multiprocessing.synchronize.Event) -> None:
    """A worker that asks trials of the budget and completes each at once."""
    asker, shared = sweeper(n_trials), open_worker(url)
    start.wait()
    while (asked := asker._ask(shared.study, shared)) is not None:
        asked.suggest_float("lr", 1e-6, 1e-2, log=True)
        asker._tell(shared.study, shared, asked, TrialState.COMPLETE, [0.0])


def test_workers_asking_at_once_complete_n_trials_in_all(tmp_path) -> None:
    url, n_trials = f"sqlite:///{tmp_path}/study.db", 12
    open_worker(url)  # the tables exist before the workers race to ask
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    workers = [ctx.Process(target=ask_until_done, args=(url, n_trials, start)) for _ in range(4)]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    trials = open_worker(url).study.trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert [t.number for t in complete] == list(range(n_trials))
    assert all(t.state == TrialState.FAIL and _budget.EXCESS in t.system_attrs for t in trials[12:])


def add_running(shared: SharedStudy, lr: float, heartbeat_age_s: float | None) -> int:
    """A RUNNING trial of a worker that beat `heartbeat_age_s` ago (None: never)."""
    running = create_trial(state=TrialState.RUNNING, params={"lr": lr}, distributions={"lr": LR})
    trial_id = shared.storage.create_new_trial(shared.study_id, template_trial=running)
    if heartbeat_age_s is not None:
        shared.storage.record_heartbeat(trial_id)
        with sqlite3.connect(shared.storage.url.removeprefix("sqlite:///")) as db:
            db.execute(
                "UPDATE trial_heartbeats SET heartbeat = datetime(heartbeat, ?) WHERE trial_id = ?",
                (f"{-heartbeat_age_s} seconds", trial_id),
            )
    return trial_id


def test_a_stale_trial_is_failed_once_and_retried_with_its_params(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/study.db"
    shared, other = open_worker(url), open_worker(url)
    stale = add_running(shared, 1e-3, heartbeat_age_s=60)
    live = add_running(shared, 2e-3, heartbeat_age_s=0)
    ahead = add_running(shared, 3e-3, heartbeat_age_s=-5)  # a host whose clock is 5 s ahead
    assert shared._stale() == other._stale() == [stale]  # two workers see it stale at once:
    retry_id = shared._retry(stale)
    assert other._retry(stale) is None  # only the first to fail it retries it
    trials = {t._trial_id: t for t in shared.study.get_trials()}
    assert trials[stale].state == TrialState.FAIL
    assert trials[live].state == trials[ahead].state == TrialState.RUNNING
    retry = trials[retry_id]
    assert retry.state == TrialState.RUNNING and retry.params == {"lr": 1e-3}
    assert retry.system_attrs[_budget.RETRY_OF] == trials[stale].number
    assert not _budget.is_fresh(retry)
    assert shared._stale() == other._stale() == []  # the retry beats (held by `shared`)


def test_a_trial_never_beating_is_stale_after_grace_period_from_its_start(tmp_path) -> None:
    shared = open_worker(f"sqlite:///{tmp_path}/study.db")
    recent = add_running(shared, 1e-3, heartbeat_age_s=None)
    old = create_trial(state=TrialState.RUNNING, params={"lr": 2e-3}, distributions={"lr": LR})
    old.datetime_start = datetime.now() - timedelta(seconds=60)
    old_id = shared.storage.create_new_trial(shared.study_id, template_trial=old)
    assert shared._stale() == [old_id]
    assert recent not in shared._stale()


def test_a_lost_trial_is_retried_at_most_max_retry_times(tmp_path) -> None:
    shared = open_worker(f"sqlite:///{tmp_path}/study.db", max_retry=1)
    add_running(shared, 1e-3, heartbeat_age_s=60)
    [retry_id] = shared.retry_stale()
    shared.release(retry_id)  # this worker dies too: its retry goes stale
    with sqlite3.connect(shared.storage.url.removeprefix("sqlite:///")) as db:
        db.execute("UPDATE trial_heartbeats SET heartbeat = datetime(heartbeat, '-60 seconds')")
    assert shared.retry_stale() == []
    assert [t.state for t in shared.study.trials] == [TrialState.FAIL, TrialState.FAIL]


def sweeper_config(*overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", ["sweep=optuna", *overrides], return_hydra_config=True)
    return cfg.hydra.sweeper


def test_sweep_optuna_uses_the_shared_study_sweeper_with_documented_defaults() -> None:
    conf = sweeper_config()
    assert conf._target_.endswith("xmodal_optuna_sweeper.XmodalOptunaSweeper")
    assert (conf.heartbeat_interval, conf.grace_period, conf.max_retry) == (60, 180, 3)
    assert conf.wait_for_others is True and conf.storage is None
    made = instantiate(conf).sweeper
    assert isinstance(made, SharedStudySweeper) and made.n_trials == 20


@pytest.mark.parametrize(
    "override, names",
    [
        ("hydra.sweeper.grace_period=30", "grace_period=30"),  # not above heartbeat_interval
        ("hydra.sweeper.max_retry=-1", "max_retry=-1"),
        ("hydra.sweeper.storage=redis://host", "storage=redis://host"),
    ],
)
def test_bad_sweeper_keys_are_refused_naming_the_key(override, names) -> None:
    made = instantiate(sweeper_config(override, "hydra.sweeper.heartbeat_interval=60"))
    with pytest.raises(UserError, match=names):
        made.setup(hydra_context=None, task_function=None, config=None)  # checked before use


SHARED = [
    "sweep=optuna",
    "seeds=[0]",
    "hydra.sweeper.heartbeat_interval=1",
    "hydra.sweeper.grace_period=2",
]


def study_trials(db: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="xmodal_ft", storage=f"sqlite:///{db}").trials


def test_two_workers_complete_n_trials_in_all_each_run_once(tmp_path) -> None:
    db, n_trials = tmp_path / "study.db", 6
    args = [*SHARED, f"hydra.sweeper.storage=sqlite:///{db}", f"hydra.sweeper.n_trials={n_trials}"]
    workers = [sweep(tmp_path, *args, wait=False) for _ in range(2)]
    outputs = [worker.communicate(timeout=300)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    assert all("Launching 1 jobs" in out for out in outputs)  # both workers ran trials
    complete = [t for t in study_trials(db) if t.state == TrialState.COMPLETE]
    assert len(complete) == n_trials
    lrs = sorted(r["config"]["lr"] for r in results(tmp_path))
    assert lrs == sorted(t.params["lr"] for t in complete)  # one run per trial, none twice


@pytest.mark.slow
def test_a_killed_workers_trial_is_retried_and_resumes_from_its_checkpoint(tmp_path) -> None:
    db = tmp_path / "study.db"
    args = [*SHARED, f"hydra.sweeper.storage=sqlite:///{db}", "hydra.sweeper.n_trials=2"]
    long = ["max_steps=40", "eval_every=4", "checkpoint_every=4"]
    first = sweep(tmp_path, *args, *long, wait=False)
    deadline = time.time() + 240
    while not list(tmp_path.rglob("checkpoint-*.pt")):
        assert time.time() < deadline and first.poll() is None, "worker ended before the kill"
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGKILL)  # dies mid-trial: its trial stays RUNNING
    first.communicate()
    [killed] = study_trials(db)
    assert killed.state == TrialState.RUNNING
    second = sweep(tmp_path, *args, *long)
    assert "resumed from" in second.output
    trials = study_trials(db)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    [retry] = [t for t in trials if not _budget.is_fresh(t)]
    assert retry.params == killed.params and retry.system_attrs["failed_trial"] == 0
    assert len(results(tmp_path)) == 2
