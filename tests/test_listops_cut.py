"""ListOps as Lu et al.'s code feeds it: `]` dropped, sequences cut to `task.max_len`, for
generated and LRA-file data; a file longer than the model's positions trains with max_len."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import make_cfg, read_results
from test_listops import TINY, lra_source, parse, rows, write_tsv
from xmodal_ft import run
from xmodal_ft.tasks.base import DataError
from xmodal_ft.tasks.listops import END, listops

ROW = "( ( ( ( [MAX 1 ) 7 ) ( ( ( [MIN 4 ) 8 ) ] ) ) ] )\t7"  # [MAX 1 7 [MIN 4 8 ] ] = 7


def lra_dir(directory: Path, row: str = ROW) -> Path:
    return write_tsv(directory, {name: [row] for name in ("train", "val", "test")})


def test_file_rows_are_cut_to_max_len_and_keep_their_label(tmp_path: Path) -> None:
    data = listops(data_dir=str(lra_dir(tmp_path)), max_len=4)
    assert data.train.x.tolist() == [[12, 2, 8, 11]]  # [MAX 1 7 [MIN
    assert data.train.lengths.tolist() == [4] and data.spec.seq_len == 4
    assert data.train.y.tolist() == [7]  # the whole tree's value


def test_keep_end_false_drops_the_closing_bracket_before_cutting(tmp_path: Path) -> None:
    full = listops(data_dir=str(lra_dir(tmp_path)), keep_end=False)
    assert full.train.x.tolist() == [[12, 2, 8, 11, 5, 9]]  # no ] (id 15)
    cut = listops(data_dir=str(lra_dir(tmp_path)), keep_end=False, max_len=5)
    assert cut.train.x.tolist() == [[12, 2, 8, 11, 5]] and cut.train.y.tolist() == [7]


def test_generated_trees_longer_than_max_len_are_cut_prefixes_of_the_same_trees() -> None:
    whole = listops(**TINY, seed=0)  # lengths 20..60
    cut = listops(**{**TINY, "max_len": 30, "gen_max_len": 60}, seed=0)
    assert cut.spec.seq_len == 30 and int(cut.train.lengths.max()) == 30
    for mine, theirs in zip(rows(cut.train), rows(whole.train), strict=True):
        assert mine == theirs[:30]
    assert torch.equal(cut.train.y, whole.train.y)


def test_lu_setting_without_end_token_keeps_labels_of_whole_trees() -> None:
    lu = listops(**{**TINY, "max_len": 30, "gen_max_len": 60, "keep_end": False}, seed=0)
    whole = listops(**TINY, seed=0)
    for mine, theirs in zip(rows(lu.train), rows(whole.train), strict=True):
        assert mine == [t for t in theirs if t != END][:30]
    assert torch.equal(lu.train.y, whole.train.y)


def test_default_window_wider_than_max_len_names_gen_max_len() -> None:
    with pytest.raises(DataError, match="task.gen_max_len"):
        listops(**{**TINY, "min_len": 40, "max_len": 30})


def long_lra_dir(directory: Path) -> Path:
    """LRA-format files whose rows (70..100 tokens) exceed a 64-position model."""
    data = listops(**{**TINY, "min_len": 70, "max_len": 100, "max_depth": 6})
    lines = {
        name: [
            f"{lra_source(parse(t)[0])}\t{y}" for t, y in zip(rows(s), s.y.tolist(), strict=True)
        ]
        for name, s in (("train", data.train), ("val", data.val), ("test", data.test))
    }
    return write_tsv(directory, lines)


def test_lra_files_longer_than_the_models_positions_train_with_max_len(tmp_path: Path) -> None:
    files = long_lra_dir(tmp_path / "lra")
    base = ["task=listops", f"task.data_dir={files}", "model.arch.n_positions=64"]
    with pytest.raises(ValueError, match="64 positions: shorten the task .*task.max_len=64"):
        run(make_cfg(*base, "variant=unfrozen_random"), run_dir=tmp_path / "long")
    cfg = make_cfg(*base, "task.max_len=64", "variant=unfrozen_random")
    val = run(cfg, run_dir=tmp_path / "cut")
    assert read_results(tmp_path / "cut")["val/acc"] == val
