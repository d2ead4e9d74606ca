"""Small files in the original GLUE formats and tiny models saved with a tiny WordPiece tokenizer.

The tokenizer is a character-level WordPiece vocabulary (letters, `##`letters, digits, some
punctuation: 74 entries, within the tiny models' vocab of 99), so any lowercase sentence encodes
to real ids: every word becomes its letters, e.g. "fun" → [CLS] f ##u ##n [SEP].
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, BertTokenizer

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = [
    *SPECIALS,
    *string.ascii_lowercase,
    *(f"##{c}" for c in string.ascii_lowercase),
    *string.digits,
    *".,'!?-\"",
]
POSITIVE = ["a charming and often affecting journey", 'it \'s a "fun" ride', "good , warm film"]
NEGATIVE = ["unflinchingly bleak and desperate", "no wit , only labored gags", "dull and slow"]
ACCEPTABLE = [
    "our friends won't buy this analysis .",
    "the sailors rode the breeze clear of the rocks .",
]
UNACCEPTABLE = ["they drank the pub .", "the more we study verbs , the crazier they get get ."]


def tiny_tokenizer() -> BertTokenizer:
    return BertTokenizer(vocab={token: i for i, token in enumerate(VOCAB)})


def save_tiny_text_model(arch: dict, directory: Path) -> Path:
    """A random tiny model plus the tiny tokenizer, saved like a pretrained checkpoint."""
    torch.manual_seed(1234)
    AutoModel.from_config(AutoConfig.for_model(**arch)).save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


def write_sst2(directory: Path, n_train: int = 24, n_dev: int = 6) -> Path:
    """GLUE SST-2 train.tsv / dev.tsv (header `sentence<TAB>label`, trailing space as in GLUE)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("dev", n_dev)):
        rows = [_sst2_row(i) for i in range(n)]
        (directory / f"{name}.tsv").write_text("sentence\tlabel\n" + "".join(rows))
    return directory


def _sst2_row(i: int) -> str:
    pool = POSITIVE if i % 2 == 0 else NEGATIVE
    return f"{pool[(i // 2) % len(pool)]} \t{1 if i % 2 == 0 else 0}\n"


def write_cola(directory: Path, n_train: int = 24, n_dev: int = 6) -> Path:
    """GLUE CoLA train.tsv / dev.tsv: no header; source, label, original judgement, sentence."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("dev", n_dev)):
        rows = [_cola_row(i) for i in range(n)]
        (directory / f"{name}.tsv").write_text("".join(rows))
    return directory


def _cola_row(i: int) -> str:
    ok = i % 2 == 0
    pool = ACCEPTABLE if ok else UNACCEPTABLE
    return f"gj04\t{int(ok)}\t{'' if ok else '*'}\t{pool[(i // 2) % len(pool)]}\n"
