"""GLUE RTE (Dagan et al. 2006; Wang et al. 2019): does sentence 1 entail sentence 2?

The worked example of docs/extending.md: this module and conf/task/rte.yaml are the whole task.
`source` is a hub dataset (GLUE's config rte) or a local dir saved by `DatasetDict.save_to_disk`
with splits train and validation (columns sentence1, sentence2, label: 0 entailment, 1 not).
"""

from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import AutoTokenizer

from xmodal_ft.tasks.base import DataError, Split, TaskData, TaskSpec, carve_validation, subsample


def rte(
    *, tokenizer: str, source: str = "nyu-mll/glue", max_len: int = 256, val_size: float = 277,
    split_seed: int = 0, n_train: int | None = None,
) -> TaskData:  # fmt: skip
    """2,490 train pairs (validation carved from them); GLUE hides test labels: dev is the test."""
    from datasets import load_dataset, load_from_disk  # slow import: only when built

    try:
        data = load_from_disk(source) if Path(source).is_dir() else load_dataset(source, "rte")
    except Exception as err:  # offline, unknown id, not a saved dataset: one fix for all
        raise DataError(f"cannot load RTE from {source} ({err}): set task.source=<a dir saved "
                        "by DatasetDict.save_to_disk>") from err  # fmt: skip
    tok = AutoTokenizer.from_pretrained(tokenizer)
    pad_id = tok.pad_token_id or 0

    def encode(rows) -> Split:  # pairs as [CLS] s1 [SEP] s2 [SEP], right-padded
        ids = tok(list(rows["sentence1"]), list(rows["sentence2"]), truncation=True,
                  max_length=max_len)["input_ids"]  # fmt: skip
        x = pad_sequence([torch.tensor(row) for row in ids], True, pad_id).int()
        return Split(x, torch.tensor(list(rows["label"])), torch.tensor([len(r) for r in ids]))

    train, val = carve_validation(encode(data["train"]), val_size, split_seed)
    test = encode(data["validation"])
    seq_len = max(int(split.lengths.max()) for split in (train, val, test))
    spec = TaskSpec("rte", 2, "text", seq_len, vocab_size=len(tok), pad_id=pad_id)
    return TaskData(spec, subsample(train, n_train, split_seed), val, test)
