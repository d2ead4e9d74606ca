"""`hydra/sweeper=xmodal_optuna` (sweep=optuna) on a current Optuna: hydra-optuna-sweeper's keys and
grammar; several workers on one storage (SQLite or a journal file) fill one study of `n_trials`,
no run trains twice, a dead worker's trial (no live lease in its run dirs) is retried with its
parameters; no outcome of a job or race with another worker stops a worker; Optuna's pruners stop
a trial from its validation passes, its seeds judged together; optuna-dashboard reads the study."""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import re
import signal
import time
import wsgiref.util
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from conftest import CONF, make_cfg
from hydra_plugins.xmodal_optuna_sweeper import _budget, _liveness, _space
from hydra_plugins.xmodal_optuna_sweeper._impl import SharedStudySweeper
from test_sweeps import TINY, results, sweep
from xmodal_ft import lease, pruning, run, trial_pruning
from xmodal_ft.errors import UserError

LR = FloatDistribution(1e-6, 1e-2, log=True)


# The budget and the search space --------------------------------------------------------------


def trial(number: int, **system_attrs) -> optuna.trial.FrozenTrial:
    made = create_trial(state=TrialState.COMPLETE, value=0.0, system_attrs=system_attrs)
    made.number = number
    return made


def test_budget_is_the_first_n_counting_trials_in_number_order() -> None:
    trials = [trial(0), trial(1), trial(2, failed_trial=0, xmodal_retries=0), trial(3),
              trial(4, xmodal_unscored=True), trial(5, xmodal_excess=True), trial(6)]  # fmt: skip
    counting = [t.number for t in trials if _budget.counts(t)]
    assert counting == [0, 1, 3, 6]  # a retry, an unscored and an excess trial do not count
    assert [_budget.in_budget(trials, n, 3) for n in counting] == [True, True, True, False]
    assert _budget.budget_left(trials[:4], 3) == 0 and _budget.budget_left(trials[:2], 3) == 1
    duplicate = trial(7, failed_trial=0, xmodal_retries=0)  # a second retry of trial 0
    assert _budget.retry_of([*trials, duplicate], 0).number == 2  # the lowest numbered wins
    assert _budget.is_duplicate([*trials, duplicate], duplicate)
    assert _budget.retries([*trials, duplicate], 0) == 1


def test_the_override_grammar_maps_to_hydra_optuna_sweepers_distributions() -> None:
    space, fixed = _space.parse(
        {"lr": "tag(log, interval(1e-6, 1e-2))", "model.dropout": "interval(0, 0.5)"},
        ["batch_size=choice(8, 16)", "max_steps=range(10, 40, 10)", "model=tiny_gpt2",
         "model.dropout=0.1"],
    )  # fmt: skip
    assert space == {
        "lr": FloatDistribution(1e-6, 1e-2, log=True),
        "batch_size": CategoricalDistribution([8, 16]),
        "max_steps": IntDistribution(10, 40, step=10),
    }
    assert fixed == {"model": "tiny_gpt2", "model.dropout": "0.1"}  # the command line wins
    assert _space.grid({"max_steps": space["max_steps"], "batch_size": space["batch_size"]}) == {
        "max_steps": [10, 20, 30],
        "batch_size": [8, 16],
    }  # fmt: skip  (range's stop left out, as Hydra's range)
    with pytest.raises(UserError, match="lr: hydra/sweeper/sampler=grid needs discrete"):
        _space.grid({"lr": space["lr"]})


# The composed config ----------------------------------------------------------------------------


def sweeper_config(*overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", ["sweep=optuna", *overrides], return_hydra_config=True)
    return cfg.hydra.sweeper


def test_sweep_optuna_uses_the_shared_study_sweeper_with_documented_defaults() -> None:
    conf = sweeper_config()
    assert conf._target_.endswith("xmodal_optuna_sweeper.XmodalOptunaSweeper")
    assert (conf.grace_period, conf.max_retry, conf.max_wait) == (180, 3, None)
    assert conf.wait_for_others is True and conf.storage is None and conf.pruner is None
    made = instantiate(conf).sweeper
    assert isinstance(made, SharedStudySweeper) and made.n_trials == 20
    assert isinstance(made.sampler, optuna.samplers.TPESampler)


@pytest.mark.parametrize("name", ["tpe", "motpe", "random", "cmaes", "nsgaii", "qmc"])
def test_every_shipped_sampler_composes_builds_and_samples(name) -> None:
    made = instantiate(sweeper_config(f"hydra/sweeper/sampler={name}")).sweeper
    study = optuna.create_study(sampler=made.sampler, direction="maximize")
    for _ in range(3):  # past CMA-ES's one start-up trial: its own sampling (the cmaes package)
        drawn = study.ask()
        study.tell(
            drawn,
            drawn.suggest_float("lr", 1e-6, 1e-2, log=True)
            + drawn.suggest_float("dropout", 0.0, 0.5),
        )  # fmt: skip  (two dimensions: CMA-ES samples 1-D spaces randomly)
    assert len({t.params["lr"] for t in study.trials}) == 3


@pytest.mark.parametrize(
    "name, kind",
    [("median", optuna.pruners.MedianPruner),
     ("successive_halving", optuna.pruners.SuccessiveHalvingPruner),
     ("hyperband", optuna.pruners.HyperbandPruner)],
)  # fmt: skip
def test_every_shipped_pruner_composes_and_builds(name, kind) -> None:
    assert isinstance(
        instantiate(sweeper_config(f"hydra/sweeper/pruner={name}")).sweeper.pruner, kind
    )


@pytest.mark.parametrize(
    "overrides, names",
    [
        (["hydra.sweeper.grace_period=0"], "grace_period=0"),
        (["hydra.sweeper.max_retry=-1"], "max_retry=-1"),
        (["hydra.sweeper.max_wait=-5"], "max_wait=-5"),
        (["hydra.sweeper.storage=redis://host"], "storage=redis://host"),
        (["hydra.sweeper.storage=sqlite:study.db"], "storage=sqlite:study.db: a URL needs"),
        (["hydra.sweeper.direction=[maximize,minimize]", "hydra/sweeper/pruner=median"],
         "hydra.sweeper.pruner: Optuna prunes single-objective"),
        (["pruner=halving", "hydra/sweeper/pruner=median"], "pruner=halving prunes lockstep"),
        (["scheme=gradual_unfreeze", "hydra/sweeper/pruner=median"], "set seeds=\\[0\\]"),
    ],
)  # fmt: skip
def test_bad_sweeper_keys_are_refused_naming_the_key(overrides, names) -> None:
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", ["sweep=optuna", *overrides], return_hydra_config=True)
    made = instantiate(cfg.hydra.sweeper)
    with pytest.raises(UserError, match=names):
        made.setup(hydra_context=None, task_function=None, config=cfg)  # checked before use


def test_an_unknown_sweeper_key_is_refused_naming_it() -> None:
    with pytest.raises(ConfigCompositionException, match="heartbeat_interval"):
        sweeper_config("hydra.sweeper.heartbeat_interval=60")  # Optuna 2 heartbeats: gone


# One worker's view: telling, retrying -------------------------------------------------------


def worker(url: str, n_trials: int = 4, **keys) -> SharedStudySweeper:
    """A worker's sweeper on the study at `url` (its own storage connection, as another process
    has), opened as `sweep` opens it."""
    made = SharedStudySweeper(
        sampler=optuna.samplers.RandomSampler(), pruner=keys.pop("pruner", None),
        direction="maximize", storage=url, study_name="s", n_trials=n_trials, n_jobs=1,
        max_failure_rate=keys.pop("max_failure_rate", 0.0), params=None,
        custom_search_space=None, grace_period=keys.pop("grace_period", 2), max_retry=3,
        wait_for_others=True, max_wait=None, **keys,
    )  # fmt: skip
    made.open([])
    return made


def asked(sweeper: SharedStudySweeper) -> optuna.Trial:
    """A trial of the budget, its lr drawn."""
    made = sweeper._ask()
    made.suggest_float("lr", 1e-6, 1e-2, log=True)
    return made


def job(value: object) -> JobReturn:
    """What a launcher returns for a job that returned `value` (an exception: the job raised)."""
    ret = JobReturn()
    ret.status = JobStatus.FAILED if isinstance(value, BaseException) else JobStatus.COMPLETED
    ret.return_value = value
    return ret


STORAGES = ["sqlite", "journal"]


def storage_url(tmp_path: Path, kind: str) -> str:
    return f"sqlite:///{tmp_path}/study.db" if kind == "sqlite" else str(tmp_path / "study.log")


@pytest.mark.parametrize("kind", STORAGES)
def test_a_worker_reporting_a_trial_another_worker_failed_does_not_crash(tmp_path, kind) -> None:
    # Defect 1: the trial is failed as stale by another worker before this one tells its value.
    url = storage_url(tmp_path, kind)
    mine, other = worker(url), worker(url)
    first, second = asked(mine), asked(mine)
    other.study.tell(first.number, state=TrialState.FAIL)  # judged dead over there
    mine._tell_batch([first, second], [job(0.5), job(0.7)])  # no exception: the batch goes on
    states = [t.state for t in other._trials()]
    assert states == [TrialState.FAIL, TrialState.COMPLETE]
    assert other._trials()[1].value == 0.7


@pytest.mark.parametrize("kind", STORAGES)
def test_a_worker_losing_the_race_to_finish_a_trial_does_not_crash(tmp_path, kind) -> None:
    # Defect 1, the tight race: the other worker fails the trial between this tell's check that
    # it runs and its write (an injected interleaving of two real storage connections).
    url = storage_url(tmp_path, kind)
    mine, other = worker(url), worker(url)
    trial_ = asked(mine)
    write = mine.store.set_trial_state_values

    def interleaved(trial_id, state, values=None):
        other.study.tell(trial_.number, state=TrialState.FAIL)
        return write(trial_id, state, values)

    mine.store.set_trial_state_values = interleaved
    assert mine._tell(trial_.number, [0.5], TrialState.COMPLETE) is False
    assert other._trials()[0].state == TrialState.FAIL


def test_a_nan_or_failed_job_is_told_fail_and_the_rest_of_the_batch_is_told(tmp_path) -> None:
    # Defect 2: a job skipped under another worker's lease returns NaN.
    mine = worker(f"sqlite:///{tmp_path}/study.db", n_trials=3, max_failure_rate=0.5)
    batch = [asked(mine) for _ in range(3)]
    scored = mine._tell_batch(batch, [job(math.nan), job(RuntimeError("job died")), job(0.7)])
    trials = mine._trials()
    assert scored and [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL,
                                                    TrialState.COMPLETE]  # fmt: skip
    assert _budget.UNSCORED in trials[0].system_attrs  # the NaN does not count in n_trials...
    assert _budget.budget_left(trials, 3) == 1  # ...a job that raised does (as before)
    assert not mine.held


def test_a_job_error_past_max_failure_rate_raises_after_the_whole_batch_is_told(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/study.db"
    mine, other = worker(url), worker(url)
    batch = [asked(mine) for _ in range(3)]
    other.study.tell(batch[0].number, state=TrialState.FAIL)  # judged dead: its runs taken over
    mine._tell_batch(batch[:1], [job(RuntimeError("lost its runs"))])  # not counted: no raise
    with pytest.raises(RuntimeError, match="job died"):
        mine._tell_batch(batch[1:], [job(RuntimeError("job died")), job(0.7)])
    assert [t.state for t in mine._trials()] == [TrialState.FAIL] * 2 + [TrialState.COMPLETE]


def test_a_trial_is_dead_after_grace_period_without_a_live_lease_in_its_run_dirs(tmp_path) -> None:
    now = [0.0]
    watch = _liveness.Watch(grace_period=10, clock=lambda: now[0])
    dirs = _liveness.run_dirs(tmp_path / "lr=0.1", [0, 1])
    running = create_trial(state=TrialState.RUNNING, system_attrs={_liveness.RUN_DIRS: dirs})
    with lease.acquire(Path(dirs[1])):
        assert watch.dead([running]) == []  # seed 1 trains: live
        now[0] = 20
        assert watch.dead([running]) == []
    for t in (25, 30):
        now[0] = t
        assert watch.dead([running]) == []  # quiet since 25
    now[0] = 35
    assert watch.dead([running]) == [running]
    now[0] = 60  # not looked at for longer than the grace: the clock starts again
    assert watch.dead([running]) == []


@pytest.mark.parametrize("kind", STORAGES)
def test_a_dead_trial_is_failed_and_retried_once_with_its_params(tmp_path, kind) -> None:
    url = storage_url(tmp_path, kind)
    one, two, dead = worker(url, grace_period=1), worker(url, grace_period=1), worker(url)
    lost = asked(dead)
    lost.report(0.3, 0)
    dirs = _liveness.run_dirs(tmp_path / "sweep" / "lr=x", None)
    dead.store.set_trial_system_attr(dead._id(lost.number), _liveness.RUN_DIRS, dirs)
    with lease.acquire(Path(dirs[0])):  # its worker trains it
        for _ in range(4):
            assert one._retries() == two._retries() == []
            time.sleep(0.5)
    quiet = time.monotonic()
    made = looking(one)
    assert time.monotonic() - quiet >= 1  # dead only after the grace period
    trials = dead._trials()
    assert trials[0].state == TrialState.FAIL and _budget.DEAD in trials[0].system_attrs
    retry = trials[made[0].number]
    assert retry.state == TrialState.RUNNING and retry.params == lost.params
    assert retry.system_attrs[_budget.RETRY_OF] == 0 and retry.intermediate_values == {0: 0.3}
    assert retry.system_attrs[_liveness.RUN_DIRS] == dirs  # same run dirs: resumes there
    assert [t.number for t in trials if _budget.counts(t)] == [0]
    assert two._retries() == []  # trial 0 is not retried again (its retry runs: one look)
    # Two workers retrying one failed trial at once: the first retry created wins.
    assert two._retry(trials[0], first=0) is None
    assert _budget.DUPLICATE in dead._trials()[-1].system_attrs


def looking(sweeper: SharedStudySweeper, seconds: float = 30) -> list[optuna.Trial]:
    """The retries `sweeper` makes, looking every 0.1 s for up to `seconds`."""
    deadline = time.monotonic() + seconds
    while not (made := sweeper._retries()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return made


def test_a_retry_finding_its_runs_still_trained_is_retried_once_they_are_free(tmp_path) -> None:
    # A trial judged dead wrongly (its worker stalled past the grace): its retry's job finds the
    # runs leased by the first worker and returns NaN; the chain goes on once the lease is gone.
    url = f"sqlite:///{tmp_path}/study.db"
    one, stalled = worker(url, grace_period=0.5), worker(url)
    first = asked(stalled)
    dirs = _liveness.run_dirs(tmp_path / "lr=x", None)
    stalled.store.set_trial_system_attr(stalled._id(first.number), _liveness.RUN_DIRS, dirs)
    [retry] = looking(one)
    with lease.acquire(Path(dirs[0])):  # the stalled worker trains on
        one._tell_batch([retry], [job(math.nan)])
        assert _budget.DEAD in one._trials()[retry.number].system_attrs
        assert looking(one, seconds=1.5) == []  # not while its runs train
    [again] = looking(one)
    assert again.params == first.params
    assert stalled._tell(first.number, [0.5], TrialState.COMPLETE) is False  # too late: logged
    one._tell_batch([again], [job(0.5)])  # the runs are done: the value at once
    assert [t.state for t in one._trials()] == [TrialState.FAIL] * 2 + [TrialState.COMPLETE]


def test_a_dead_trial_is_retried_at_most_max_retry_times(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/study.db"
    one = worker(url, grace_period=0.5)
    one.max_retry = 1
    asked(worker(url))
    [retry] = looking(one)
    one.held.clear()  # this worker dies too: its retry goes quiet
    assert looking(one, seconds=3) == []
    assert [t.state for t in one._trials()] == [TrialState.FAIL, TrialState.FAIL]


def test_waiting_for_others_is_bounded_and_names_what_it_gave_up_on(tmp_path, caplog) -> None:
    url = f"sqlite:///{tmp_path}/study.db"
    mine, other = worker(url, n_trials=1, grace_period=0.6), worker(url)
    running = asked(other)
    dirs = _liveness.run_dirs(tmp_path / "lr=x", [0])
    other.store.set_trial_system_attr(other._id(running.number), _liveness.RUN_DIRS, dirs)
    mine.max_wait = 1.0
    started = time.monotonic()
    with lease.acquire(Path(dirs[0])):  # live all along: never judged dead
        mine._fill()
    assert 1.0 < time.monotonic() - started < 10
    assert f"Gave up waiting after 1 s (hydra.sweeper.max_wait) for trials 0 {running.params}" in (
        caplog.text
    )
    assert f"(live; {dirs[0]})" in caplog.text


def ask_until_done(url: str, n_trials: int, start: multiprocessing.synchronize.Event) -> None:
    """A worker that asks trials of the budget and completes each at once."""
    asker = worker(url, n_trials)
    start.wait()
    while (made := asker._ask()) is not None:
        made.suggest_float("lr", 1e-6, 1e-2, log=True)
        asker._tell(made.number, [0.0], TrialState.COMPLETE)


@pytest.mark.parametrize("kind", STORAGES)
def test_workers_asking_at_once_complete_n_trials_in_all(tmp_path, kind) -> None:
    url, n_trials = storage_url(tmp_path, kind), 8
    worker(url)  # the tables exist before the workers race to ask
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    workers = [ctx.Process(target=ask_until_done, args=(url, n_trials, start)) for _ in range(3)]
    for each in workers:
        each.start()
    start.set()
    for each in workers:
        each.join(120)
        assert each.exitcode == 0
    trials = worker(url)._trials()
    assert [t.number for t in trials if t.state == TrialState.COMPLETE] == list(range(n_trials))
    assert all(_budget.EXCESS in t.system_attrs for t in trials[n_trials:])


# Pruning: the job side ------------------------------------------------------------------------


def history(*values: float, every: int = 2) -> list[dict[str, float]]:
    return [{"step": every * i, "val/acc": v} for i, v in enumerate(values)]


def test_a_trials_seeds_are_judged_together_by_optunas_pruner() -> None:
    store = optuna.storages.InMemoryStorage()
    pruner = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    study = optuna.create_study(study_name="together", storage=store, pruner=pruner,
                                direction="maximize")  # fmt: skip
    done = study.ask()
    for step, value in enumerate([0.1, 0.5]):
        done.report(value, 2 * step)
    study.tell(done, 0.5)
    trial_pruning.share(study, store)
    ident = {"storage": None, "study": "together", "number": study.ask().number}
    other = {"storage": None, "study": "together", "number": study.ask().number}
    # One lockstep group of two trials' seeds (n_jobs trials under the lockstep launcher). In
    # trial 1, seed 0 beats the finished trial (0.6 > 0.5) and seed 1 does not: their mean (0.45)
    # does not, and both stop; trial 2's seeds (mean 0.55) train on.
    runs = [SeedRun(lr, h) for lr, h in zip([1e-3, 1e-3, 2e-3, 2e-3], [history(0.1)] * 4,
                                               strict=True)]  # fmt: skip
    judged = trial_pruning.TrialPruner(dict(zip(runs, [ident, ident, other, other], strict=True)),
                                       "acc")  # fmt: skip
    assert judged.prune(0, runs) == []
    passes = [history(0.1, 0.6), history(0.1, 0.3), history(0.1, 0.6), history(0.1, 0.5)]
    for seed_run, passed in zip(runs, passes, strict=True):
        seed_run.state.history = passed
    assert judged.prune(2, runs) == runs[:2]
    assert study.trials[1].intermediate_values == {0: 0.1, 2: pytest.approx(0.45)}
    assert study.trials[2].intermediate_values == {0: 0.1, 2: pytest.approx(0.55)}
    runs[2].state.history, runs[3].state.history = history(0.1, 0.6, 0.7), history(0.1, 0.5, 0.5)
    assert judged.prune(4, runs[2:]) == []


def test_a_trials_later_seeds_stop_where_an_earlier_chunk_pruned_its_first() -> None:
    """`max_runs` split the trial's seeds: seed 0 (an earlier chunk) was pruned at step 2, so
    seed 1 stops at step 2 too, without asking Optuna again."""
    store = optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name="chunks", storage=store, direction="maximize")
    trial_pruning.share(study, store)
    ident = {"storage": None, "study": "chunks", "number": study.ask().number}
    seed_1 = SeedRun(1e-3, history(0.1, 0.9))
    first = pruning.Finished(1e-3, history(0.1, 0.2), pruned_at=2)
    judged = trial_pruning.TrialPruner({seed_1: ident}, "acc", [first])
    assert judged.prune(0, [seed_1]) == []
    assert judged.prune(2, [seed_1]) == [seed_1]
    assert study.trials[0].intermediate_values == {0: pytest.approx(0.1)}


class SeedRun:
    """A run as a pruner sees it: its spec's lr and its validation history."""

    def __init__(self, lr: float, passes: list[dict[str, float]]):
        self.spec = SimpleNamespace(cfg=SimpleNamespace(lr=lr))
        self.state = SimpleNamespace(history=passes)


def test_a_pruned_trial_trains_its_seeds_in_one_group_and_stops_them_together(
    tmp_path, caplog
) -> None:
    # The job side as under any launcher: the trial's identity in the config, its study loaded
    # from the storage (a journal file) with the pruner the sweeper recorded in the trial.
    from hydra_plugins.xmodal_optuna_sweeper._storage import open_study

    url = str(tmp_path / "study.log")
    study, store = open_study(url, study_name="seam", direction="maximize")
    best = study.ask()
    for step in range(0, 9, 2):
        best.report(1.0, step)  # a trial no run can match
    study.tell(best, 1.0)
    number = study.ask().number
    median = {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 1}
    trial_id = store.get_trial_id_from_study_id_trial_number(
        store.get_study_id_from_name("seam"), number
    )
    store.set_trial_system_attr(trial_id, trial_pruning.PRUNER, median)
    ident = f"optuna_trial={{storage:'{url}',study:seam,number:{number}}}"
    caplog.set_level(logging.INFO, logger="xmodal_ft.recipe")
    run(make_cfg(*TINY, "max_steps=8", "eval_every=2", "seeds=[0,1]", ident), tmp_path / "t")
    seeds = [json.loads((tmp_path / "t" / f"seed_{s}" / "results.json").read_text())
             for s in (0, 1)]  # fmt: skip
    assert [(r["pruned"], r["pruned_at"]) for r in seeds] == [(True, 0), (True, 0)]  # together
    assert "2 runs at once" in caplog.text  # the banner of one lockstep group
    assert list(study.trials[number].intermediate_values) == [0]
    assert "optuna_trial" not in str(tmp_path / "t" / "seed_0")  # not in run-dir names...
    plain = run(make_cfg(*TINY, "max_steps=8", "eval_every=2", "seed=0"), tmp_path / "plain")
    assert not math.isnan(plain)
    hashes = {json.loads(p.read_text())["config_hash"] for p in tmp_path.rglob("results.json")}
    assert len(hashes) == 2  # ...nor in config hashes (seed 0 and plain differ only in it)


# Whole sweeps: train.py workers --------------------------------------------------------------


SHARED = ["sweep=optuna", "seeds=[0]", "hydra.sweeper.grace_period=2"]


def study_trials(url: str) -> list[optuna.trial.FrozenTrial]:
    from hydra_plugins.xmodal_optuna_sweeper._storage import open_storage

    return optuna.load_study(study_name="xmodal_ft", storage=open_storage(url)).trials


def trainings(sweep_dir: Path) -> dict[str, int]:
    """How often each run was trained, from the jobs' logs: a training ends in "test acc = ...
    (results in <run dir>)"; a run skipped as complete or leased logs no such line."""
    ends = Counter()
    for log in sweep_dir.rglob("train.log"):
        ends.update(re.findall(r"\(results in (.+?)\)$", log.read_text(), flags=re.M))
    return dict(ends)


@pytest.mark.parametrize("kind", STORAGES)
def test_two_workers_complete_n_trials_in_all_each_run_once(tmp_path, kind) -> None:
    url, n_trials = storage_url(tmp_path, kind), 6
    args = [*SHARED, f"hydra.sweeper.storage={url}", f"hydra.sweeper.n_trials={n_trials}"]
    workers = [sweep(tmp_path / "sweep", *args, wait=False) for _ in range(2)]
    outputs = [each.communicate(timeout=300)[0] for each in workers]
    assert [each.returncode for each in workers] == [0, 0], outputs
    assert all("Launching 1 jobs" in out and "Traceback" not in out for out in outputs)
    complete = [t for t in study_trials(url) if t.state == TrialState.COMPLETE]
    assert len(complete) == n_trials
    lrs = sorted(r["config"]["lr"] for r in results(tmp_path / "sweep"))
    assert lrs == sorted(t.params["lr"] for t in complete)  # one run per trial, none twice
    assert sorted(trainings(tmp_path / "sweep").values()) == [1] * n_trials


@pytest.mark.slow
def test_two_workers_sampling_a_categorical_lr_finish_without_crashing(tmp_path) -> None:
    url, n_trials = f"sqlite:///{tmp_path}/study.db", 4
    args = [*SHARED, f"hydra.sweeper.storage={url}", f"hydra.sweeper.n_trials={n_trials}",
            "lr=choice(0.001,0.003)", "max_steps=16"]  # fmt: skip
    workers = [sweep(tmp_path / "sweep", *args, wait=False) for _ in range(2)]
    outputs = [each.communicate(timeout=600)[0] for each in workers]
    assert [each.returncode for each in workers] == [0, 0], outputs
    assert not any("Traceback" in out for out in outputs), outputs
    trials = study_trials(url)
    assert sum(t.state == TrialState.COMPLETE for t in trials) == n_trials
    assert all(_budget.UNSCORED in t.system_attrs for t in trials if t.state == TrialState.FAIL)
    assert set(trainings(tmp_path / "sweep").values()) == {1}  # each lr trained once
    assert {t.params["lr"] for t in trials} <= {0.001, 0.003}


@pytest.mark.slow
def test_a_trial_is_pruned_from_its_validation_passes_in_a_sweep(tmp_path) -> None:
    # Two launches on one journal file (the jobs load the study from it): trial 0 at lr 0.01
    # learns; trial 1 at lr 1e-6 cannot, and the median pruner stops both its seeds at once.
    url = str(tmp_path / "study.log")
    args = ["sweep=optuna", "seeds=[0,1]", "max_steps=24", "eval_every=4",
            "hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_startup_trials=1",
            f"hydra.sweeper.storage={url}"]  # fmt: skip
    sweep(tmp_path / "sweep", *args, "lr=0.01", "hydra.sweeper.n_trials=1")
    out = sweep(tmp_path / "sweep", *args, "lr=0.000001", "hydra.sweeper.n_trials=2").output
    runs = {(r["config"]["lr"], r["config"]["seed"]): r for r in results(tmp_path / "sweep")}
    assert sorted(runs) == [(1e-6, 0), (1e-6, 1), (0.01, 0), (0.01, 1)]
    assert not runs[0.01, 0].get("pruned") and not runs[0.01, 1].get("pruned")
    assert runs[1e-6, 0]["pruned_at"] == runs[1e-6, 1]["pruned_at"] < 24  # judged together
    assert "trial 1: pruned by Optuna" in out and "2 runs at once" in out
    first, second = study_trials(url)
    assert (first.state, second.state) == (TrialState.COMPLETE, TrialState.PRUNED)
    assert max(second.intermediate_values) == runs[1e-6, 0]["pruned_at"]


@pytest.mark.slow
def test_a_killed_workers_trial_is_retried_and_resumes_from_its_checkpoint(tmp_path) -> None:
    url = str(tmp_path / "study.log")
    args = [*SHARED, f"hydra.sweeper.storage={url}", "hydra.sweeper.n_trials=2"]
    long = ["max_steps=40", "eval_every=4", "checkpoint_every=4"]
    first = sweep(tmp_path / "sweep", *args, *long, wait=False)
    deadline = time.time() + 240
    while not list(tmp_path.rglob("checkpoint-*.pt")):
        assert time.time() < deadline and first.poll() is None, "worker ended before the kill"
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGKILL)  # dies mid-trial: its trial stays RUNNING
    first.communicate()
    [killed] = study_trials(url)
    assert killed.state == TrialState.RUNNING
    second = sweep(tmp_path / "sweep", *args, *long)
    assert "resumed from" in second.output
    trials = study_trials(url)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    [retry] = [t for t in trials if _budget.RETRY_OF in t.system_attrs]
    assert retry.params == killed.params and retry.system_attrs[_budget.RETRY_OF] == 0
    assert len(results(tmp_path / "sweep")) == 2


# optuna-dashboard ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", STORAGES)
def test_optuna_dashboard_opens_a_study_the_sweeper_wrote(tmp_path, kind) -> None:
    dashboard = pytest.importorskip("optuna_dashboard", reason="pip install optuna-dashboard")
    url = storage_url(tmp_path, kind)
    mine = worker(url)
    done = asked(mine)
    mine._tell_batch([done], [job(0.5)])
    app = dashboard.wsgi(url)  # what `optuna-dashboard <storage>` serves

    def get(path: str) -> dict:
        environ = {"PATH_INFO": path}
        wsgiref.util.setup_testing_defaults(environ)
        status = []
        body = app(environ, lambda code, headers, *exc: status.append(code))
        assert status == ["200 OK"]
        return json.loads(b"".join(body))

    [study] = get("/api/studies")["study_summaries"]
    assert (study["study_name"], study["directions"]) == ("s", ["maximize"])
    [shown] = get(f"/api/studies/{study['study_id']}")["trials"]
    assert (shown["state"], shown["values"]) == ("Complete", [0.5])
