"""Report over results.json files written here: selection, mean ± SEM, bad input, paper column."""

from __future__ import annotations

import ast
import csv
import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest

import xmodal_ft
from conftest import fake_run
from xmodal_ft import report
from xmodal_ft.record.results import write_results


def grid(root: Path) -> None:
    for seed, (v1, v2) in enumerate([(0.5, 0.7), (0.6, 0.65)]):
        fake_run(root, 1e-4, seed, v1, 0.4 + seed / 10)
        fake_run(root, 1e-3, seed, v2, 0.6 + seed / 10)  # mean val 0.675 > 0.55


def test_best_lr_by_mean_val_and_test_mean_sem(tmp_path) -> None:
    grid(tmp_path)
    [sel] = report.aggregate(report.load_runs([tmp_path])[0])
    assert sel.best.lr == 1e-3
    assert sel.best.seeds == (0, 1)
    assert sel.best.val == pytest.approx((0.675, 0.025))
    assert sel.best.test == pytest.approx((0.65, 0.05))  # SEM = stdev / sqrt(2) = 0.0707/1.414
    assert sel.best.steps == pytest.approx((15.0, 5.0))
    assert [s.lr for s in sel.per_lr] == [1e-4, 1e-3]
    assert sel.per_lr[0].val == pytest.approx((0.55, 0.05))
    assert sel.per_lr[0].test == pytest.approx((0.45, 0.05))
    assert sorted(r.seed for r in sel.runs) == [0, 1] and {r.lr for r in sel.runs} == {1e-3}


# Validation and test disagree, and single seeds mislead: the mean validation metric over seeds
# picks 1e-3; the best test mean is at 1e-4, the best single validation score at 1e-2, the best
# median validation at 1e-4, and seed 0 alone would pick 1e-2.
DISAGREE = {  # lr: ([val per seed], [test per seed])
    1e-4: ([0.60, 0.60, 0.60], [0.90, 0.90, 0.90]),
    1e-3: ([0.70, 0.50, 0.66], [0.50, 0.60, 0.70]),
    1e-2: ([0.80, 0.45, 0.45], [0.10, 0.20, 0.30]),
}


def test_best_lr_is_chosen_by_mean_validation_not_test_nor_one_seed(tmp_path) -> None:
    for lr, (vals, tests) in DISAGREE.items():
        for seed, (val, test) in enumerate(zip(vals, tests, strict=True)):
            fake_run(tmp_path, lr, seed, val, test)
    [sel] = report.aggregate(report.load_runs([tmp_path])[0])
    assert sel.best.lr == 1e-3
    assert sel.best.val == pytest.approx((0.62, math.sqrt(0.0112 / 3)))
    assert sel.best.test == pytest.approx((0.6, 0.1 / math.sqrt(3)))
    assert [p.test[0] for p in sel.per_lr] == pytest.approx([0.9, 0.6, 0.2])


def test_a_tie_in_mean_validation_goes_to_the_smaller_lr(tmp_path) -> None:
    for lr, test in ((1e-2, 0.3), (1e-4, 0.1), (1e-3, 0.2)):
        fake_run(tmp_path, lr, 0, 0.5, test)
    [sel] = report.aggregate(report.load_runs([tmp_path])[0])
    assert sel.best.lr == 1e-4 and sel.best.test[0] == 0.1


def test_groups_are_selected_independently(tmp_path) -> None:
    fake_run(tmp_path, 1e-4, 0, 0.9, 0.8)
    fake_run(tmp_path, 1e-3, 0, 0.5, 0.4)
    fake_run(tmp_path, 1e-4, 0, 0.2, 0.3, variant="unfrozen_random")
    fake_run(tmp_path, 1e-3, 0, 0.7, 0.6, variant="unfrozen_random")
    fpt, unfrozen = report.aggregate(report.load_runs([tmp_path])[0])
    assert fpt.group == ("mnist", "gpt2", "fpt", "fixed") and fpt.best.lr == 1e-4
    assert unfrozen.group[2] == "unfrozen_random" and unfrozen.best.lr == 1e-3


def test_main_writes_tables_and_plots(tmp_path) -> None:
    grid(tmp_path)
    fake_run(tmp_path, 1e-3, 0, 0.8, 0.75, variant="unfrozen_pretrained")
    fake_run(tmp_path, 1e-3, 0, 0.8, 0.5, model="minilm")
    report.main([str(tmp_path), "--compare", "rothermel2021"])
    out = tmp_path / "report"
    md = (out / "report.md").read_text()
    # Published: GPT-2 on MNIST, FPT 98.5 and unfrozen pretrained 99.0; nothing for MiniLM.
    fpt = "65.0 ± 5.0 (lr 1e-03) [paper 98.5, Δ -33.5]"
    unfrozen = "75.0 ± n/a (lr 1e-03) [paper 99.0, Δ -24.0]"
    assert f"| mnist | {fpt} | {unfrozen} |" in md
    assert "| mnist | 50.0 ± n/a (lr 1e-03) [paper n/a] |" in md
    assert "## gpt2, scheme fixed: gradient steps to the best validation metric" in md
    assert "| mnist | 15 ± 5 | 10 ± n/a |" in md
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["model"], r["variant"], r["lr"], r["n_seeds"]) for r in rows] == [
        ("gpt2", "fpt", "0.001", "2"),
        ("gpt2", "unfrozen_pretrained", "0.001", "1"),
        ("minilm", "fpt", "0.001", "1"),
    ]
    assert float(rows[0]["test_mean"]) == pytest.approx(0.65)
    assert float(rows[0]["test_sem"]) == pytest.approx(0.05)
    assert float(rows[0]["paper_test"]) == pytest.approx(0.985)
    assert float(rows[0]["paper_diff"]) == pytest.approx(0.65 - 0.985)
    assert rows[2]["paper_test"] == "" and rows[2]["paper_diff"] == ""
    table = (out / "test_table.csv").read_text().splitlines()
    assert table[:2] == [
        "model,scheme,task,fpt,unfrozen_pretrained",
        'gpt2,fixed,mnist,"65.0 ± 5.0 [paper 98.5, Δ -33.5]","75.0 ± n/a [paper 99.0, Δ -24.0]"',
    ]
    for name in ("lr_mnist_gpt2.png", "curves_mnist_gpt2.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_tables_without_compare_have_no_paper_column(tmp_path) -> None:
    grid(tmp_path)
    report.main([str(tmp_path), "--out", str(tmp_path / "out")])
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| mnist | 65.0 ± 5.0 (lr 1e-03) |" in md and "paper" not in md
    assert "mean ± SEM over seeds; chosen LR in parentheses.\n" in md
    header = (tmp_path / "out" / "results.csv").read_text().splitlines()[0]
    assert header.endswith("test_mean,test_sem,steps_mean,steps_sem")


def test_empty_dir_says_there_are_no_results(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert "no complete results.json" in capsys.readouterr().err


def test_corrupt_results_are_reported_and_skipped(tmp_path) -> None:
    grid(tmp_path)
    bad = tmp_path / "broken" / "results.json"
    bad.parent.mkdir()
    bad.write_text('{"status": "complete", "config": ')
    runs, skipped = report.load_runs([tmp_path])
    assert len(runs) == 4
    assert len(skipped) == 1 and skipped[0].startswith(str(bad))
    report.main([str(tmp_path)])
    assert str(bad) in (tmp_path / "report" / "report.md").read_text()


def test_mixed_incompatible_runs_are_refused(tmp_path) -> None:
    grid(tmp_path)
    fake_run(tmp_path / "other", 1e-3, 2, 0.9, 0.9, max_steps=5000)
    with pytest.raises(report.ReportError, match="incompatible runs .* max_steps differ"):
        report.aggregate(report.load_runs([tmp_path])[0])


def test_mean_sem_of_one_value_has_no_sem() -> None:
    mean, sem = report.mean_sem([0.5])
    assert mean == 0.5 and math.isnan(sem)


def test_published_numbers_ship_with_the_package() -> None:
    paper = report.load_paper("rothermel2021")
    assert report.load_paper("paper") == paper
    assert len(paper) == 28  # 3 image tasks × 2 models × 4 variants + ListOps × GPT-2 × 4
    assert paper[("mnist", "gpt2", "fpt")] == pytest.approx(0.985)
    assert paper[("cifar10_lra", "distilgpt2", "unfrozen_pretrained")] == pytest.approx(0.655)
    assert paper[("listops", "gpt2", "unfrozen_random")] == pytest.approx(0.576)
    with pytest.raises(report.ReportError, match="choose one of: rothermel2021, paper"):
        report.load_paper("nope")


def test_write_returns_every_file_and_reruns_into_the_same_nested_dir(tmp_path) -> None:
    grid(tmp_path / "runs")
    selections = report.aggregate(report.load_runs([tmp_path / "runs"])[0])
    out = tmp_path / "reports" / "nested"
    for _ in range(2):  # a second report into the same directory overwrites the first
        paths = report.write(selections, out, skipped=[])
    assert [p.name for p in paths] == [
        "results.csv", "results_per_lr.csv", "test_table.csv", "report.md", "lr_mnist_gpt2.png",
        "curves_mnist_gpt2.png",
    ]  # fmt: skip
    assert all(p.parent == out and p.stat().st_size > 0 for p in paths)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)  # no temp files
    header = (out / "results.csv").read_text().splitlines()[0]
    assert header == (
        "task,model,variant,scheme,metric,lr,n_seeds,val_mean,val_sem,test_mean,test_sem,"
        "steps_mean,steps_sem"
    )


GOLDEN_MD = """# Sweep report

Test metric (×100) at the LR with the best mean validation metric, mean ± SEM over seeds; \
chosen LR in parentheses; published numbers in brackets, Δ = ours − published.

## gpt2, scheme fixed: test

| task | fpt | unfrozen_pretrained |
|---|---|---|
| mnist | 65.0 ± 5.0 (lr 1e-03) [paper 98.5, Δ -33.5] | \
75.0 ± n/a (lr 1e-03) [paper 99.0, Δ -24.0] |

## gpt2, scheme fixed: gradient steps to the best validation metric

| task | fpt | unfrozen_pretrained |
|---|---|---|
| mnist | 15 ± 5 | 10 ± n/a |

## gpt2, scheme fixed: gradient steps to match fpt's best validation metric (Rothermel et al.)

| task | fpt | unfrozen_pretrained |
|---|---|---|
| mnist | 15 ± 5 [paper 2.4e+05] | 10 ± n/a [paper 4.6e+04] |

## Skipped files

- {root}/broken/results.json: JSONDecodeError: Expecting property name enclosed in double \
quotes: line 1 column 2 (char 1)
"""


def test_report_markdown_in_full(tmp_path) -> None:
    grid(tmp_path)
    fake_run(tmp_path, 1e-3, 0, 0.8, 0.75, variant="unfrozen_pretrained")
    broken = tmp_path / "broken" / "results.json"
    broken.parent.mkdir()
    broken.write_text("{")
    report.main([str(tmp_path), "--compare", "rothermel2021", "--out", str(tmp_path / "out")])
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert md == GOLDEN_MD.replace("{root}", str(tmp_path))


def test_differences_name_every_differing_key_nested_or_present_on_one_side() -> None:
    a = {"lr": 1, "max_steps": 5, "model": {"dropout": 0.1, "name": "gpt2"}, "task": {"n": 1}}
    b = {"lr": 2, "model": {"dropout": 0.0, "name": "gpt2"}, "task": 3, "patience": 2}
    assert report._differences(a, b) == {"max_steps", "model.dropout", "task", "patience"}


def test_steps_to_match_is_blank_where_a_variant_has_no_runs(tmp_path) -> None:
    grid(tmp_path)  # mnist: fpt only
    fake_run(tmp_path, 1e-3, 0, 0.8, 0.75, variant="unfrozen_random", task="cifar10")
    fake_run(tmp_path, 1e-3, 0, 0.5, 0.45, task="cifar10")
    report.main([str(tmp_path)])
    md = (tmp_path / "report" / "report.md").read_text()
    table = md.split("steps to match fpt's best validation metric (Rothermel et al.)")[1]
    assert "| cifar10 | 10 ± n/a | 10 ± n/a |" in table
    assert "| mnist | 15 ± 5 |  |" in table
    assert "| mnist | 65.0 ± 5.0 (lr 1e-03) |  |" in md  # no unfrozen_random run on mnist


def test_main_logs_the_report_files_to_the_tracker_project_given(tmp_path, monkeypatch) -> None:
    calls = []
    log = lambda paths, project: calls.append((paths, project))  # noqa: E731
    monkeypatch.setattr(report, "log_to_wandb", log)
    grid(tmp_path)
    report.main([str(tmp_path), "--wandb", "my-project"])
    [(paths, project)] = calls
    assert project == "my-project"
    assert [p.name for p in paths][:4] == [
        "results.csv", "results_per_lr.csv", "test_table.csv", "report.md"
    ]  # fmt: skip


def test_results_files_are_read_as_written_and_incomplete_ones_skipped(tmp_path) -> None:
    run_dir = fake_run(tmp_path, 1e-3, 2, 0.7, 0.6)
    payload = json.loads((run_dir / "results.json").read_text())
    payload |= {"test/mcc": 0.25}
    for key in ("metric", "history"):  # older results: metric acc, no history
        del payload[key]
    write_results(run_dir, payload)
    for status, name in (("running", "unfinished"), (None, "nostatus")):
        other = {**payload, "status": status} if status else {"config": payload["config"]}
        write_results(tmp_path / name, other)
    write_results(tmp_path / "list", {"status": "complete"} | {"x": 1})
    (tmp_path / "list" / "results.json").write_text("[1, 2]")
    [run], skipped = report.load_runs([tmp_path])
    assert run.path == run_dir and run.group == ("mnist", "gpt2", "fpt", "fixed")
    assert (run.lr, run.seed, run.metric, run.val, run.test) == (1e-3, 2, "acc", 0.7, 0.6)
    assert (run.best_step, run.history, run.tests) == (30, [], {"acc": 0.6, "mcc": 0.25})
    assert sorted(line.split("/")[-2] for line in skipped) == ["list", "nostatus"]
    assert all("ValueError: not a complete run (status != 'complete')" in s for s in skipped)
    [unfinished] = report.failed_runs([tmp_path])  # a status other than complete: not finished
    assert (unfinished.path.name, unfinished.status) == ("unfinished", "running")


def test_report_errors_name_the_runs_and_the_fix(tmp_path) -> None:
    missing = tmp_path / "absent"
    with pytest.raises(report.ReportError) as error:
        report.load_runs([missing])
    assert str(error.value) == f"{missing} is not a directory: pass multirun dirs of train.py -m"
    (tmp_path / "a").mkdir()
    (tmp_path / "b" / "x").mkdir(parents=True)
    hint = ": run a sweep first, e.g. python train.py -m sweep=lr_grid"
    with pytest.raises(report.ReportError) as error:
        report.load_runs([tmp_path / "a", tmp_path / "b"])
    assert str(error.value) == f"no complete results.json under {tmp_path}/a, {tmp_path}/b{hint}"
    (tmp_path / "b" / "x" / "results.json").write_text("{")
    with pytest.raises(report.ReportError) as error:
        report.load_runs([tmp_path / "a", tmp_path / "b"])
    assert str(error.value).endswith(f"{tmp_path}/b (1 unreadable){hint}")


def test_aggregation_errors_name_the_group_and_the_runs(tmp_path) -> None:
    first = fake_run(tmp_path / "one", 1e-3, 0, 0.5, 0.5)
    second = fake_run(tmp_path / "two", 1e-3, 0, 0.6, 0.6)
    group = ("mnist", "gpt2", "fpt", "fixed")
    with pytest.raises(report.ReportError) as error:
        report.aggregate(report.load_runs([tmp_path])[0])
    assert str(error.value) == f"{group} lr=0.001 has duplicate seeds [0, 0] ({first}, {second})"
    other = fake_run(tmp_path / "two", 1e-3, 0, 0.6, 0.6, max_steps=7)  # exactly two runs
    with pytest.raises(report.ReportError) as error:
        report.aggregate(report.load_runs([tmp_path])[0])
    assert str(error.value) == (
        f"incompatible runs in {group}: max_steps differ between {first} and {other}; "
        "report them separately (one dir per setting)"
    )
    payload = json.loads((other / "results.json").read_text())
    payload |= {
        "metric": "mcc",
        "val/mcc": 0.1,
        "test/mcc": 0.1,
        "config": {**payload["config"], "max_steps": 100},
    }
    write_results(other, payload)
    with pytest.raises(report.ReportError) as error:
        report.aggregate(report.load_runs([tmp_path])[0])
    assert str(error.value) == f"mixed metrics in {group}: 'acc' ({first}) and 'mcc' ({other})"


def test_per_lr_csv_has_every_lr_of_every_group_with_mean_sem_and_seeds(tmp_path) -> None:
    grid(tmp_path)  # fpt: 1e-4 (val 0.5, 0.6) and 1e-3 (val 0.7, 0.65, chosen)
    fake_run(tmp_path, 1e-4, 0, 0.2, 0.3, variant="unfrozen_random")
    fake_run(tmp_path, 1e-2, 0, 0.7, 0.6, variant="unfrozen_random")
    report.main([str(tmp_path)])
    rows = list(csv.DictReader((tmp_path / "report" / "results_per_lr.csv").open()))
    assert list(rows[0]) == [
        "task", "model", "variant", "scheme", "metric", "lr", "n_seeds", "seeds", "val_mean",
        "val_sem", "test_mean", "test_sem", "steps_mean", "steps_sem", "chosen", "pruned",
    ]  # fmt: skip
    assert [(r["variant"], r["lr"], r["n_seeds"], r["seeds"], r["chosen"]) for r in rows] == [
        ("fpt", "0.0001", "2", "0 1", "0"),
        ("fpt", "0.001", "2", "0 1", "1"),
        ("unfrozen_random", "0.0001", "1", "0", "0"),
        ("unfrozen_random", "0.01", "1", "0", "1"),
    ]
    numbers = [
        [float(r[k]) for k in ("val_mean", "val_sem", "test_mean", "test_sem")] for r in rows
    ]
    assert numbers[0] == pytest.approx([0.55, 0.05, 0.45, 0.05])
    assert numbers[1] == pytest.approx([0.675, 0.025, 0.65, 0.05])
    assert numbers[2][:1] == [0.2] and math.isnan(numbers[2][1])
    chosen = [r for r in rows if r["chosen"] == "1"]
    best = list(csv.DictReader((tmp_path / "report" / "results.csv").open()))
    assert [(r["variant"], r["lr"], r["test_mean"]) for r in chosen] == [
        (r["variant"], r["lr"], r["test_mean"]) for r in best
    ]


def failed_job(root: Path, name: str, overrides: list[str], log_error: str = "") -> Path:
    """A Hydra job dir as a run that died leaves it: `.hydra/overrides.yaml`, the job log, and
    metrics up to step 40 with a checkpoint there (no results.json)."""
    run_dir = root / name
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    log = "[2026-01-01 12:00:00,000][xmodal_ft.tasks.images][INFO] - digits: 1150/288/359\n"
    if log_error:
        log += f"[2026-01-01 12:00:01,000][xmodal_ft.recipe][ERROR] - {log_error}\n"
    (run_dir / "train.log").write_text(log)
    lines = [json.dumps({"step": s, "train/loss": 1.0}) for s in (10, 20, 30, 40)]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (run_dir / "checkpoint-0123456789ab.pt").write_bytes(b"")
    return run_dir


FAILURES_MD = """## Runs without complete results

3 of 8 runs have no complete results.json (failed, killed, or still running) and are left out of \
the tables above.

| run dir | overrides | status | error |
|---|---|---|---|
| {root}/a1 | lr=0.01,seed=0 | failed | RuntimeError: CUDA out of memory \\| retry |
| {root}/a2 | lr=0.01,seed=1 | no results.json | out of memory; last logged step 40; a \
checkpoint: relaunching into this sweep dir resumes it |
| {root}/a3 | lr=0.01,seed=2 | no results.json | nothing logged: failed before training, or \
still starting |
"""


def test_a_sweep_with_failed_runs_lists_them_in_the_report(tmp_path) -> None:
    grid(tmp_path)
    fake_run(tmp_path, 1e-3, 2, 0.9, 0.9)  # a complete run with its Hydra files
    (tmp_path / "mnist-gpt2-fpt-fixed-0.001-2" / ".hydra").mkdir()
    (tmp_path / "mnist-gpt2-fpt-fixed-0.001-2" / "metrics.jsonl").write_text("")
    failed = failed_job(tmp_path, "a1", ["lr=0.01", "seed=0"])
    for path in (failed / "metrics.jsonl", *failed.glob("checkpoint-*")):
        path.unlink()
    write_results(failed, {"status": "failed", "error": "RuntimeError: CUDA out of memory | retry"})
    failed_job(tmp_path, "a2", ["lr=0.01", "seed=1"], log_error="out of memory")
    (tmp_path / "a3" / ".hydra").mkdir(parents=True)
    (tmp_path / "a3" / ".hydra" / "overrides.yaml").write_text("- lr=0.01\n- seed=2\n")
    report.main([str(tmp_path)])
    md = (tmp_path / "report" / "report.md").read_text()
    assert FAILURES_MD.replace("{root}", str(tmp_path)) in md
    assert "| mnist | 73.3 ± 8.8 (lr 1e-03) |" in md  # the complete runs only


def test_failures_of_seed_runs_are_listed_by_seed_dir(tmp_path) -> None:
    job = failed_job(tmp_path, "job", ["lr=0.01", "seeds=[0,1]"])
    for path in (job / "metrics.jsonl", *job.glob("checkpoint-*")):
        path.unlink()
    fake_run(job, 1e-2, 0, 0.6, 0.6)
    (job / "seed_1").mkdir()
    (job / "seed_1" / "metrics.jsonl").write_text('{"step": 10, "train/loss": 2.0}\n{"st')
    [failure] = report.failed_runs([tmp_path])
    assert failure.path == job / "seed_1"
    assert failure.run == "lr=0.01,seeds=[0,1]"  # the job's overrides
    assert failure.error == "last logged step 10"  # the half-written record after it ignored


def test_a_sweep_whose_runs_all_failed_lists_the_failures(tmp_path, capsys) -> None:
    failed_job(tmp_path, "a", ["lr=0.1", "seed=0"], log_error="ModelLoadError: no weights")
    write_results(tmp_path / "b", {"status": "failed", "error": "lr=-1 must be > 0"})
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"xmodal-report: error: no complete results.json under {tmp_path}: 2 run(s) did not "
        f"finish\n  {tmp_path}/b: failed: lr=-1 must be > 0\n  {tmp_path}/a: no results.json: "
        "ModelLoadError: no weights; last logged step 40; a checkpoint: relaunching into this "
        "sweep dir resumes it\n"
    )
    assert not (tmp_path / "report").exists()


# Run in a fresh interpreter: `python -m xmodal_ft.report ARGS`, then the modules it loaded.
LOADED = """import json, runpy, sys
sys.argv = ["xmodal-report", *sys.argv[1:]]
try:
    runpy.run_module("xmodal_ft.report", run_name="__main__", alter_sys=True)
except SystemExit as stop:
    assert not stop.code, stop.code
print(json.dumps(sorted(sys.modules)))
"""


@pytest.mark.parametrize("args", [["--help"], ["{root}", "--compare", "paper"]])
def test_the_report_cli_runs_without_torch_or_transformers(tmp_path, args: list[str]) -> None:
    grid(tmp_path)
    argv = [a.replace("{root}", str(tmp_path)) for a in args]
    proc = subprocess.run(
        [sys.executable, "-c", LOADED, *argv], capture_output=True, text=True, check=True
    )
    loaded = set(json.loads(proc.stdout.splitlines()[-1]))
    assert "xmodal_ft.report_types" in loaded  # the report ran in that interpreter
    assert (tmp_path / "report" / "report.md").exists() != ("--help" in args)
    assert not {m for m in loaded if m.split(".")[0] in ("torch", "transformers")}
    assert "xmodal_ft.recipe" not in loaded
    if "--help" in args:
        assert "matplotlib" not in loaded  # plotting loads only to plot


def test_the_package_loads_the_recipe_only_when_run_is_asked_for() -> None:
    code = (
        "import sys; import xmodal_ft; from omegaconf import OmegaConf; "
        "from hydra.core.config_store import ConfigStore; store = ConfigStore.instance().repo; "
        "assert OmegaConf.has_resolver('run_key') and OmegaConf.has_resolver('not_hashed'); "
        "assert 'torch' not in sys.modules and 'config_schema.yaml' not in store; "
        "from xmodal_ft import run; from xmodal_ft.recipe import run as recipe_run; "
        "assert run is recipe_run is xmodal_ft.run; assert 'config_schema.yaml' in store; "
        "print('ok')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout == "ok\n", proc.stderr
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        xmodal_ft.nope  # noqa: B018


def test_report_modules_import_in_one_direction() -> None:
    """report → report_plots, report_compare → report_types: nothing imports the report back."""
    for name in ("report_types", "report_plots", "report_compare", "labels", "papers"):
        tree = ast.parse(Path(xmodal_ft.__file__).with_name(f"{name}.py").read_text())
        imported = {
            node.module if isinstance(node, ast.ImportFrom) else alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        }
        assert "xmodal_ft.report" not in imported, name
        assert not any(str(m).startswith("xmodal_ft.schemes") for m in imported), name


def test_runs_of_one_group_that_trained_on_different_thread_counts_are_named(
    tmp_path, caplog
) -> None:
    """`threads` is not part of the config hash (a resumed or relaunched run may train on
    another count), and the count changes results in the last digits: the report says where
    the finished runs of one group used different counts."""
    for lr, seed, threads in [(1e-3, 0, 1), (1e-3, 1, 2), (1e-2, 0, 1), (1e-2, 1, 1)]:
        path = fake_run(tmp_path, lr=lr, seed=seed) / "results.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "threads": threads}))
    fake_run(tmp_path, lr=1e-3, task="sst2")  # a group on one count: not named
    with caplog.at_level(logging.WARNING, logger="xmodal_ft"):
        report.main([str(tmp_path)])
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Thread counts" in text
    assert "- mnist / gpt2 / fpt / fixed: 3 runs on 1 thread, 1 run on 2 threads" in text
    assert "sst2" not in text.split("## Thread counts")[1]
    assert "mnist / gpt2 / fpt / fixed: runs trained on different thread counts" in caplog.text
