"""GLUE single-sentence tasks (Wang et al. 2019): SST-2 (sentiment) and CoLA (acceptability).

Read from the original GLUE TSV files (`SST-2/{train,dev}.tsv` with a `sentence<TAB>label`
header; `CoLA/{train,dev}.tsv` without one: source, label, original judgement, sentence) or from
the hub (`nyu-mll/glue`, configs sst2 / cola). GLUE's test labels are hidden, so the dev split is
the test split here and validation is carved from train with a fixed seed. Sentences are tokenized
with the model's own tokenizer (special tokens added, truncated to `max_len`) and right-padded;
`Split.lengths` holds the true lengths. CoLA's first metric is Matthews correlation, as GLUE
reports it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from xmodal_ft.tasks.base import DataError, Split, TaskData, TaskSpec, carve_validation, subsample

log = logging.getLogger(__name__)

NUM_CLASSES = 2
Rows = tuple[list[str], list[int]]


def read_sst2_tsv(path: str | Path) -> Rows:
    """Sentences and labels of a GLUE SST-2 train/dev file (header `sentence<TAB>label`)."""
    lines = _lines(path)
    if not lines or lines[0].split("\t") != ["sentence", "label"]:
        raise DataError(
            f"{path}:1: header must be 'sentence<TAB>label' as in GLUE's SST-2 train/dev.tsv "
            "(test.tsv has no labels and cannot be used)"
        )
    return _rows(path, lines[1:], first_line=2, n_fields=2, sentence=0, label=1)


def read_cola_tsv(path: str | Path) -> Rows:
    """Sentences and labels of a GLUE CoLA train/dev file (no header; 4 columns)."""
    return _rows(path, _lines(path), first_line=1, n_fields=4, sentence=3, label=1)


def sst2(
    *,
    tokenizer: str,
    data_dir: str | None = None,
    hub_id: str = "nyu-mll/glue",
    max_len: int = 128,
    val_size: float = 872,
    split_seed: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
) -> TaskData:
    """GLUE SST-2: 67k train sentences (validation carved from them), the 872 dev as test."""
    return _glue(
        "sst2", "SST-2", read_sst2_tsv, ("acc",), tokenizer, data_dir=data_dir, hub_id=hub_id,
        max_len=max_len, val_size=val_size, split_seed=split_seed, n_train=n_train, n_test=n_test,
    )  # fmt: skip


def cola(
    *,
    tokenizer: str,
    data_dir: str | None = None,
    hub_id: str = "nyu-mll/glue",
    max_len: int = 128,
    val_size: float = 1043,
    split_seed: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
) -> TaskData:
    """GLUE CoLA: 8.5k train sentences (validation carved from them), the 1043 dev as test."""
    return _glue(
        "cola", "CoLA", read_cola_tsv, ("mcc", "acc"), tokenizer, data_dir=data_dir,
        hub_id=hub_id, max_len=max_len, val_size=val_size, split_seed=split_seed,
        n_train=n_train, n_test=n_test,
    )  # fmt: skip


def _glue(
    name: str,
    folder: str,
    reader: Callable[[Path], Rows],
    metrics: tuple[str, ...],
    tokenizer: str,
    *,
    data_dir: str | None = None,
    hub_id: str = "nyu-mll/glue",
    max_len: int = 128,
    val_size: float = 0.1,
    split_seed: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
) -> TaskData:
    """Read (GLUE TSV or hub), tokenize, carve validation from train; dev becomes test."""
    if max_len < 2:
        raise DataError(f"task.max_len={max_len} must be >= 2 tokens")
    if data_dir is None:
        raw_train, raw_test = _from_hub(hub_id, name, folder)
    else:
        root = _glue_folder(data_dir, folder)
        raw_train, raw_test = reader(root / "train.tsv"), reader(root / "dev.tsv")
    tok = _load_tokenizer(tokenizer)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    train, val = carve_validation(_encode(tok, raw_train, max_len, pad_id), val_size, split_seed)
    pool = len(train)
    train = subsample(train, n_train, split_seed)
    test = subsample(_encode(tok, raw_test, max_len, pad_id), n_test, split_seed)
    seq_len = max(int(s.lengths.max()) for s in (train, val, test))
    spec = TaskSpec(
        name, NUM_CLASSES, "text", seq_len=seq_len, vocab_size=len(tok), pad_id=pad_id,
        metrics=metrics,
    )  # fmt: skip
    log.info(
        "%s: %d/%d/%d train/val/test (test = GLUE dev), up to %d tokens of %s",
        name, len(train), len(val), len(test), seq_len, tokenizer,
    )  # fmt: skip
    return TaskData(spec, train, val, test, train_pool=pool)


def _lines(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"GLUE file {path} is missing; set task.data_dir=<GLUE dir> or null (hub)")
    text = path.read_text(encoding="utf-8")
    return [line for line in text.split("\n") if line.strip()]


def _rows(
    path: str | Path, lines: list[str], first_line: int, n_fields: int, sentence: int, label: int
) -> Rows:
    """Fields `sentence` and `label` of tab-separated lines (no quoting, as GLUE's reader)."""
    sentences, labels = [], []
    for number, line in enumerate(lines, start=first_line):
        fields = line.rstrip("\r").split("\t")
        if len(fields) != n_fields or fields[label] not in ("0", "1"):
            raise DataError(
                f"{path}:{number}: expected {n_fields} tab-separated fields with a 0/1 label in "
                f"column {label + 1}, got {fields!r}; is this the right GLUE task's file?"
            )
        sentences.append(fields[sentence].strip())
        labels.append(int(fields[label]))
    if not labels:
        raise DataError(f"{path} has no examples")
    return sentences, labels


def _glue_folder(data_dir: str, folder: str) -> Path:
    """`data_dir` or `data_dir/<folder>`, whichever holds train.tsv and dev.tsv."""
    root = Path(data_dir).expanduser()
    for candidate in (root, root / folder):
        if (candidate / "train.tsv").is_file() and (candidate / "dev.tsv").is_file():
            return candidate
    raise DataError(
        f"task.data_dir {root} holds no GLUE {folder} files: put train.tsv and dev.tsv there (or "
        f"in {root / folder}), or set task.data_dir=null to load them from the hub"
    )


def _from_hub(hub_id: str, config: str, folder: str) -> tuple[Rows, Rows]:
    import datasets  # slow import: only when the hub is used

    try:
        dataset = datasets.load_dataset(hub_id, config)
    except Exception as err:  # offline, unknown id, auth, ...: the same fix applies
        raise DataError(
            f"could not load {hub_id} ({config}) from the Hugging Face hub ({err}); the hub cannot "
            "be reached or HF_DATASETS_OFFLINE / HF_HUB_OFFLINE is set: pass "
            f"task.data_dir=<dir with GLUE's {folder}/train.tsv and dev.tsv>"
        ) from err
    return tuple(  # type: ignore[return-value]
        (list(dataset[split]["sentence"]), list(dataset[split]["label"]))
        for split in ("train", "validation")
    )


def _load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise DataError(
            f"cannot load a tokenizer from {path!r} ({err}); text tasks use the model's own "
            "tokenizer: set model.path to a hub id or a dir holding one (tokenizer.save_pretrained)"
        ) from err


def _encode(tok: Any, rows: Rows, max_len: int, pad_id: int) -> Split:
    """Token ids right-padded with `pad_id` into an int32 (N, longest) tensor, plus lengths."""
    sentences, labels = rows
    ids = tok(sentences, truncation=True, max_length=max_len)["input_ids"]
    lengths = torch.tensor([len(row) for row in ids], dtype=torch.long)
    x = torch.full((len(ids), int(lengths.max())), pad_id, dtype=torch.int32)
    for i, row in enumerate(ids):
        x[i, : len(row)] = torch.tensor(row, dtype=torch.int32)
    return Split(x, torch.tensor(labels, dtype=torch.long), lengths)
