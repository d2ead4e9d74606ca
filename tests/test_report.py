"""Report over results.json files written here: selection, mean ± SEM, bad input, paper column."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from xmodal_ft import report
from xmodal_ft.record import write_results


def fake_run(root: Path, lr: float, seed: int, val: float, test: float, **config) -> Path:
    """A results.json in the shape `run()` writes (the report's input format)."""
    names = {"task": "mnist", "model": "gpt2", "variant": "fpt", "scheme": "fixed"}
    cfg = {g: {"name": config.pop(g, n)} for g, n in names.items()}
    cfg |= {"lr": lr, "seed": seed, "max_steps": 100, **config}
    run_dir = root / f"{cfg['variant']['name']}-{lr}-{seed}"
    history = [{"step": 0, "val/acc": 0.1}, {"step": 10, "val/acc": val}]
    payload = {"status": "complete", "config": cfg, "metric": "acc", "val/acc": val}
    payload |= {"test/acc": test, "best_step": 10 * (seed + 1), "history": history}
    write_results(run_dir, payload)
    return run_dir


def grid(root: Path) -> None:
    for seed, (v1, v2) in enumerate([(0.5, 0.7), (0.6, 0.65)]):
        fake_run(root, 1e-4, seed, v1, 0.4 + seed / 10)
        fake_run(root, 1e-3, seed, v2, 0.6 + seed / 10)  # mean val 0.675 > 0.55


def test_best_lr_by_mean_val_and_test_mean_sem(tmp_path) -> None:
    grid(tmp_path)
    [sel] = report.aggregate(report.load_runs([tmp_path])[0])
    assert sel.best.lr == 1e-3
    assert sel.best.seeds == (0, 1)
    assert sel.best.test == pytest.approx((0.65, 0.05))  # SEM = stdev / sqrt(2) = 0.0707/1.414
    assert sel.best.steps == pytest.approx((15.0, 5.0))
    assert [s.lr for s in sel.per_lr] == [1e-4, 1e-3]


def test_main_writes_tables_and_plots(tmp_path) -> None:
    grid(tmp_path)
    fake_run(tmp_path, 1e-3, 0, 0.8, 0.75, variant="unfrozen_pretrained")
    report.main([str(tmp_path), "--compare", "paper"])
    out = tmp_path / "report"
    md = (out / "report.md").read_text()
    assert "| mnist | 65.0 ± 5.0 (lr 1e-03) [paper n/a] | 75.0 ± n/a (lr 1e-03) [paper n/a] |" in md
    assert "gradient steps to the best validation metric" in md
    assert (out / "test_table.csv").read_text().splitlines()[0] == (
        "model,scheme,task,fpt,unfrozen_pretrained"
    )
    for name in ("lr_mnist_gpt2.png", "curves_mnist_gpt2.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


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


def test_paper_table_file_ships_with_the_package() -> None:
    assert report.load_paper("paper") == {}  # format shipped; numbers not yet transcribed
    with pytest.raises(report.ReportError, match="choose one of: paper"):
        report.load_paper("nope")
