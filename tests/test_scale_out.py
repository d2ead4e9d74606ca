"""Lockstep at scale: groups on worker processes pinned to devices, and groups as submitit jobs
(the local executor standing in for SLURM), each run equal to the same run trained alone."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import submitit
import torch

from conftest import make_cfg
from test_sweeps import sweep
from xmodal_ft import dispatch, engine, placement, recipe, workers
from xmodal_ft.lockstep import sizing
from xmodal_ft.placement import Device, PlacementError
from xmodal_ft.runspec import RunSpec

GRID = [(1e-3, 0), (1e-2, 0), (1e-3, 1), (1e-2, 1)]  # (lr, seed)
STEPS = ["variant=unfrozen_random", "max_steps=12", "eval_every=6", "log_every=1", "threads=1"]
CORES = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
two_cores = pytest.mark.skipif(len(CORES) < 2, reason="needs two CPU cores")


def specs(root: Path, *overrides: str) -> list[RunSpec]:
    return [
        RunSpec(make_cfg(*STEPS, *overrides, f"lr={lr}", f"seed={seed}"), root / f"{lr}_{seed}")
        for lr, seed in GRID
    ]


def group_of(runs: list[RunSpec], log: Path | None = None) -> dispatch.Group:
    logs = [log] * len(runs) if log else []
    return dispatch.Group(runs, list(range(len(runs))), [0] * len(runs), logs)


def trained_alone(root: Path, *overrides: str) -> list[RunSpec]:
    alone = specs(root, *overrides)
    for spec in alone:
        recipe.train([spec])
    return alone


def assert_same_runs(runs: list[RunSpec], alone: list[RunSpec]) -> None:
    """Bit for bit: validation history, best step, test metric and every logged loss."""
    for spec, reference in zip(runs, alone, strict=True):
        mine, theirs = (
            json.loads((s.run_dir / "results.json").read_text()) for s in (spec, reference)
        )
        assert mine["history"] == theirs["history"]
        for key in ("config_hash", "val/acc", "test/acc", "best_step", "steps"):
            assert mine[key] == theirs[key], key
        losses = [(s.run_dir / "metrics.jsonl").read_text() for s in (spec, reference)]
        assert losses[0] == losses[1]


# ---- placement --------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU core sets")
def test_a_count_cuts_this_processs_cores_into_disjoint_near_equal_sets() -> None:
    sets = placement.resolve(len(CORES))
    assert [d.ids for d in sets] == [(c,) for c in CORES]
    (whole,) = placement.resolve(1)
    assert whole == Device("cpu", tuple(CORES))
    assert placement.resolve(None) == []  # no GPUs: this process, one group after another


def test_named_devices_parse_and_bad_names_say_how_to_name_them() -> None:
    assert placement.resolve([f"cpu:{CORES[0]}"]) == [Device("cpu", (CORES[0],))]
    assert placement.resolve(f"cpu:{CORES[0]}-{CORES[0]}")[0].label == f"cpu:{CORES[0]}"
    for bad, message in [
        (len(CORES) + 1, "may use"),
        (0, "at least 1"),
        (["gpu:0"], "is not a device: use a count"),
        (["cpu:x"], "is not a device"),
        ([f"cpu:{max(CORES) + 1}"], "are not among"),
        ([f"cpu:{CORES[0]}", f"cpu:{CORES[0]}"], "twice"),
        ([], "empty"),
    ]:
        with pytest.raises(PlacementError, match=message):
            placement.resolve(bad)
    if not torch.cuda.is_available():
        with pytest.raises(PlacementError, match="torch sees 0 GPU"):
            placement.resolve(["cuda:0"])


def test_each_cards_worker_runs_on_its_share_of_the_cores(monkeypatch) -> None:
    monkeypatch.setattr(placement, "_cores", lambda: list(range(16)))
    cards = placement._named(4, gpus=8)
    assert [d.label for d in cards] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    shares = [d.cores for d in placement.resolve(4)]
    assert shares == [tuple(range(i, i + 4)) for i in (0, 4, 8, 12)]
    assert [d.cores for d in placement.resolve(["cuda:5"])] == [tuple(range(16))]
    monkeypatch.setattr(placement, "_cores", lambda: [0, 1])
    assert [d.cores for d in placement.resolve(None)] == [(0,), (1,)] * 4  # 8 cards, 2 cores


def fake_cards(monkeypatch, count: int = 8) -> None:
    """Make torch see `count` CUDA cards, none where `CUDA_VISIBLE_DEVICES` is empty (as it
    does)."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    visible = lambda: os.environ.get("CUDA_VISIBLE_DEVICES") != ""  # noqa: E731
    monkeypatch.setattr(torch.cuda, "is_available", visible)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count if visible() else 0)
    monkeypatch.setattr(os, "sched_setaffinity", lambda pid, cores: None, raising=False)
    monkeypatch.setattr(placement, "_cores", lambda: list(range(4)))


def test_a_cpu_device_on_a_gpu_host_trains_on_the_cpu(monkeypatch) -> None:
    """`devices=[cpu:0,cpu:1]` on a GPU host: each worker trains on its cores; every one of them
    used to train on cuda:0 (`device=auto` picked the card all of them saw)."""
    fake_cards(monkeypatch)
    cpu, card = placement.resolve(["cpu:0-1", "cuda:3"])
    cpu.pin()
    assert engine.select_device("auto").type == "cpu"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    card.pin()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3" and engine.select_device("auto").type == "cuda"


def test_each_worker_sizes_its_groups_by_the_memory_of_its_own_device(monkeypatch) -> None:
    """A mixed list: CPU workers share the host's memory, each card's worker has its card's."""
    fake_cards(monkeypatch)
    devices = placement.resolve(["cuda:0", "cpu:0", "cpu:1-3"])
    assert [workers.memory_share(d, devices) for d in devices] == [1.0, 0.5, 0.5]
    only_cpu = placement.resolve(1)
    assert workers.memory_share(only_cpu[0], only_cpu) == 1.0


def test_a_group_is_cut_in_halves_while_a_device_would_stay_idle(tmp_path) -> None:
    runs = specs(tmp_path)
    (whole,) = dispatch.split([group_of(runs)], 1)
    assert whole.specs == runs
    halves = dispatch.split([group_of(runs)], 2)
    assert [part.index for part in halves] == [[0, 1], [2, 3]]  # seeds stay side by side
    assert len(dispatch.split([group_of(runs[:1])], 4)) == 1
    assert sorted(len(p.specs) for p in dispatch.split([group_of(runs)], 3)) == [1, 1, 2]
    pruned = specs(tmp_path, "pruner=halving")
    assert len(dispatch.split([group_of(pruned)], 2)) == 1  # the pruner needs every seed of an LR


# ---- memory per group -------------------------------------------------------------------------

GiB = 1 << 30


def test_a_cards_free_memory_counts_what_torchs_cache_holds_unused(monkeypatch) -> None:
    """`mem_get_info` leaves out the blocks PyTorch's caching allocator keeps after a group's
    tensors are freed, so `max_runs` shrank group after group on a GPU worker."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * GiB, 80 * GiB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 30 * GiB)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 5 * GiB)
    assert sizing._free_memory(torch.device("cuda", 0)) == 35 * GiB


@pytest.mark.gpu
def test_a_groups_freed_tensors_count_as_free_memory_for_the_next_group() -> None:
    device = torch.device("cuda")
    before = sizing._free_memory(device)
    block = torch.empty(GiB, dtype=torch.uint8, device=device)
    del block  # freed, but kept in torch's cache
    assert sizing._free_memory(device) > before - GiB // 4


# ---- groups on devices ------------------------------------------------------------------------


@two_cores
def test_groups_on_two_cpu_devices_equal_the_same_runs_trained_alone(tmp_path) -> None:
    alone = trained_alone(tmp_path / "alone")
    runs = specs(tmp_path / "devices")
    log = tmp_path / "job.log"
    devices = placement.resolve(2)
    parts = dispatch.split([group_of(runs, log)], len(devices))
    outcomes = workers.on_devices(parts, devices, max_runs=None)
    assert all(isinstance(v, float) for outcome in outcomes for v in outcome)
    assert_same_runs(runs, alone)
    pids = {json.loads((s.run_dir / "results.json").read_text())["pid"] for s in runs}
    assert len(pids) == 2 and os.getpid() not in pids  # two workers, neither this process
    assert log.read_text().count("3 runs at once") == 0 and "2 runs at once" in log.read_text()


def test_a_group_that_fails_on_a_device_fails_its_jobs_with_the_users_error(tmp_path) -> None:
    runs = specs(tmp_path, "scheme=gradual_unfreeze")  # lockstep refuses gradual unfreezing
    (outcome,) = workers.on_devices([group_of(runs)], placement.resolve(1), max_runs=None)
    assert all("default launcher" in str(err) for err in outcome)


@pytest.mark.slow
@two_cores
def test_a_sweep_on_two_devices_writes_what_one_process_writes(tmp_path) -> None:
    grid = ("lr=1e-3,1e-2", "seed=0,1", "threads=1")
    out = sweep(tmp_path / "devices", "hydra/launcher=lockstep", "hydra.launcher.devices=2", *grid)
    assert "2 groups on 2 devices" in out.output
    sweep(tmp_path / "here", "hydra/launcher=lockstep", *grid)
    for path in sorted((tmp_path / "here").glob("*/results.json")):
        mine = json.loads((tmp_path / "devices" / path.parent.name / "results.json").read_text())
        theirs = json.loads(path.read_text())
        for key in ("config_hash", "history", "val/acc", "test/acc", "best_step"):
            assert mine[key] == theirs[key], key


@pytest.mark.gpu
def test_groups_spread_over_the_visible_gpus(tmp_path) -> None:
    """One worker per card (devices=null with two or more GPUs, else the one card), each
    group on its own card and equal to its lone run within bf16 rounding."""
    devices = placement.resolve(None) or placement.resolve(1)
    overrides = ("device=auto", "threads=null")
    alone = trained_alone(tmp_path / "alone", *overrides)
    runs = specs(tmp_path / "gpus", *overrides)
    parts = dispatch.split([group_of(runs)], len(devices))
    workers.on_devices(parts, devices, max_runs=None)
    results = [json.loads((s.run_dir / "results.json").read_text()) for s in runs]
    assert all(r["device"].startswith("cuda") for r in results)
    assert len({r["pid"] for r in results}) == min(len(devices), len(parts))
    for result, spec in zip(results, alone, strict=True):
        lone = json.loads((spec.run_dir / "results.json").read_text())
        assert result["val/acc"] == pytest.approx(lone["val/acc"], abs=0.1)


def worker_pids() -> list[int]:
    """The pids of this process's device workers (spawned multiprocessing children)."""
    me = os.getpid()
    children = Path(f"/proc/{me}/task/{me}/children").read_text().split()
    return [
        int(pid) for pid in children
        if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]  # fmt: skip


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the workers in /proc")
def test_closing_the_workers_after_an_idle_one_died_keeps_the_launchs_results(tmp_path) -> None:
    """A worker that died while idle (killed, out of memory) made `close()` raise
    BrokenProcessPool, which discarded the results of the whole launch."""
    runs = specs(tmp_path)[:1]
    pool = workers.Workers(placement.resolve(1))
    try:
        (outcome,) = pool.train([group_of(runs)], max_runs=None)
        (pid,) = worker_pids()
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)  # dead by now
    finally:
        pool.close()
    assert isinstance(outcome[0], float)


def simulate(sizes: list[int], devices: int) -> float:
    """When the last of groups of `sizes` runs ends on `devices` workers, as `workers.Schedule`
    gives them out, each run of a group costing one second (groups on one device in turn)."""
    now = [0.0]
    groups = [
        dispatch.Group([None] * n, list(range(n)), [g] * n, []) for g, n in enumerate(sizes)
    ]  # fmt: skip
    schedule = workers.Schedule(groups, devices, clock=lambda: now[0])
    ends: dict[int, float] = {}
    while True:
        for d in range(devices):
            if d not in ends and (group := schedule.take(d)) is not None:
                ends[d] = now[0] + len(group.specs)
        if not ends:
            return now[0]
        d = min(ends, key=ends.get)
        now[0] = ends.pop(d)
        schedule.done(d)


def test_the_last_groups_are_split_so_that_no_device_idles_while_work_remains() -> None:
    """9 groups on 8 cards: the 9th group used to train alone while 7 cards idled (16 s); it is
    cut among the cards that just finished (9 s). A tail group is not cut for cards that stay
    busy much longer."""
    assert simulate([8] * 9, devices=8) <= 10
    assert simulate([8] * 8, devices=8) == 8
    assert simulate([16, 4, 4], devices=2) == 16  # the second card takes both small groups whole


@pytest.mark.gpu
def test_a_cpu_device_on_a_gpu_host_trains_its_group_on_the_cpu(tmp_path) -> None:
    runs = specs(tmp_path, "device=auto")[:2]
    workers.on_devices([group_of(runs)], placement.resolve([f"cpu:{CORES[0]}"]), max_runs=None)
    devices = {json.loads((s.run_dir / "results.json").read_text())["device"] for s in runs}
    assert devices == {"cpu"}


# ---- groups as SLURM jobs (submitit's local executor) -----------------------------------------


def test_groups_as_submitit_jobs_equal_the_same_runs_trained_alone(tmp_path) -> None:
    alone = trained_alone(tmp_path / "alone")
    runs = specs(tmp_path / "slurm")
    parts = dispatch.split([group_of(runs)], 2)
    options = {"cluster": "local", "timeout_min": 10, "partition": "ignored-by-local"}
    outcomes = dispatch.on_slurm(parts, None, options, tmp_path / "submitit" / "%j")
    assert all(isinstance(v, float) for outcome in outcomes for v in outcome)
    assert_same_runs(runs, alone)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the task in /proc")
def test_a_requeued_group_job_resumes_its_runs_from_their_checkpoints(tmp_path) -> None:
    """Preempt the job once a checkpoint is on disk: submitit requeues it (the checkpoint
    protocol) and the runs continue from their checkpoints to the uninterrupted results."""
    longer = ("max_steps=300", "eval_every=50", "checkpoint_every=10", "log_every=10")
    alone = trained_alone(tmp_path / "alone", *longer)
    runs = specs(tmp_path / "slurm", *longer)
    executor = submitit.AutoExecutor(tmp_path / "submitit" / "%j", cluster="local")
    executor.update_parameters(timeout_min=10)
    job = executor.submit(dispatch.GroupJob(), dispatch.sendable(group_of(runs)), None)
    deadline = time.time() + 120
    while len(list((tmp_path / "slurm").glob("*/checkpoint-*.pt"))) < len(runs):
        assert time.time() < deadline and job.state != "FINISHED", job.stderr()
        time.sleep(0.1)
    os.kill(_task_of(job), signal.SIGUSR2)  # the signal SLURM sends before preemption
    values = job.result()
    assert all(isinstance(v, float) for v in values)
    log = (job.stdout() or "") + (job.stderr() or "")
    assert "Requeued job" in log and log.count("resumed from") == len(runs), log[-3000:]
    assert_same_runs(runs, alone)


def _task_of(job: submitit.Job) -> int:
    """The pid of the local job's task (its controller's child), which SLURM would signal."""
    controller = job._process.pid
    children = Path(f"/proc/{controller}/task/{controller}/children").read_text().split()
    return int(children[0])


@pytest.mark.slow
def test_a_sweep_through_lockstep_slurm_trains_every_run(tmp_path) -> None:
    out = sweep(
        tmp_path, "hydra/launcher=lockstep_slurm", "hydra.launcher.slurm.cluster=local",
        "lr=1e-3,1e-2", "seed=0,1",
    )  # fmt: skip
    assert "local job" in out.output
    results = [json.loads(p.read_text()) for p in tmp_path.glob("*/results.json")]
    assert len(results) == 4 and all(r["launcher"] == "lockstep" for r in results)
