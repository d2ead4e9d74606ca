"""LRA ListOps (Tay et al. 2021, Long Range Arena, sec. 3.1): a seeded generator and a TSV reader.

The generator follows LRA's `lra_benchmarks/data/listops.py` rules exactly: operators MIN, MAX,
MED (LRA's int(np.median): the middle value, or the mean of the two middle values rounded down)
and SM (sum mod 10) over values 0-9; each operator takes 2..max_args arguments; a node below the
root is an operator with probability 0.25 while its depth is below max_depth (root depth 1, so
trees have at most max_depth levels); trees whose token count lies outside [min_len, max_len] are
rejected (inclusive; LRA's 500 < length < 2000 is exclusive). Speed comes from exact shortcuts,
not from a different distribution: the root is always an operator (LRA rejects bare values) and a
tree is abandoned as soon as it passes max_len. LRA's de-duplication is left out: two identical
trees of 500+ tokens are vanishingly unlikely.

Tokens (VOCAB): pad, digits, `[MIN`, `[MAX`, `[MED`, `[SM` and `]`. By default two quirks of the
original pipeline are avoided: `]` stays a token (LRA's tfds tokenizer dropped it) and nothing is
truncated (LRA cut inputs at 512). Both are options, as Lu et al.'s code (which Rothermel et al.
build on) has them: `keep_end=False` drops `]`, and every sequence (read or generated) is cut to
its first `max_len` tokens; `gen_max_len` lets the generator draw LRA's lengths (up to 2000) that
are then cut to `max_len`. Labels are always the value of the whole tree. LRA's `(`/`)` are
dropped: its TSV wraps every argument in them as a by-product of its tuple encoding, so they repeat
what the brackets say, roughly double the length and are not counted by LRA's own length bounds.
The reader strips them, so both sources give the same tokens. `Split.x` is int16 to save memory
(96k x 2000 tokens: 384 MB); call `.long()` on a batch before an embedding lookup.
"""

from __future__ import annotations

import csv
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from xmodal_ft.tasks.base import DataError, Split, TaskData, TaskSpec

log = logging.getLogger(__name__)

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
VOCAB: tuple[str, ...] = ("<pad>", *(str(v) for v in range(10)), *OPERATORS, END)
PAD_ID = 0
TOKEN_IDS = {token: i for i, token in enumerate(VOCAB)}
NUM_CLASSES = 10
SPLITS = ("train", "val", "test")

_DIGIT0, _OP0, _END = TOKEN_IDS["0"], TOKEN_IDS[OPERATORS[0]], TOKEN_IDS[END]
_END_BYTE = bytes([_END])
_GROUPING = frozenset({"(", ")"})
_OP_P = 0.25  # LRA: a non-root node above max_depth is an operator with this probability
_MAX_TRIES = 1000  # rejected trees in a row before the length window is declared unreachable


def _median(args: list[int]) -> int:
    """LRA's int(np.median(args)): the middle value, or the floor of the two middle values' mean."""
    s, mid = sorted(args), len(args) // 2
    return s[mid] if len(args) % 2 else (s[mid - 1] + s[mid]) // 2


def _sum_mod(args: list[int]) -> int:
    return sum(args) % 10


_APPLY: tuple[Callable[[list[int]], int], ...] = (min, max, _median, _sum_mod)


def tokenize(source: str) -> list[int]:
    """Token ids of a whitespace-separated expression; LRA's `(`/`)` are dropped."""
    ids = []
    for token in source.split():
        if token in _GROUPING:
            continue
        if token not in TOKEN_IDS or token == VOCAB[PAD_ID]:
            raise ValueError(
                f"unknown token {token!r}; ListOps tokens are ( ) {' '.join(VOCAB[1:])}"
            )
        ids.append(TOKEN_IDS[token])
    return ids


def evaluate(ids: Sequence[int]) -> int:
    """The value of one expression given as token ids (no padding); ValueError if malformed."""
    ops: list[int] = []
    args: list[list[int]] = [[]]
    for i in ids:
        if _DIGIT0 <= i < _DIGIT0 + 10:
            args[-1].append(i - _DIGIT0)
        elif _OP0 <= i < _OP0 + len(OPERATORS):
            ops.append(i - _OP0)
            args.append([])
        elif i == _END and ops and args[-1]:
            value = _APPLY[ops.pop()](args.pop())
            args[-1].append(value)
        else:
            raise ValueError(f"token id {i} is out of place in a ListOps expression")
    if ops or len(args[0]) != 1:
        raise ValueError("a ListOps expression must be one value or one closed operator")
    return args[0][0]


@dataclass(frozen=True)
class _Rules:
    min_len: int
    max_len: int
    max_depth: int
    max_args: int

    def check(self) -> None:
        if not 1 <= self.min_len <= self.max_len:
            raise DataError(
                f"ListOps generation needs 1 <= min_len <= max_len; got {self.min_len}, "
                f"{self.max_len}: lower task.min_len, or set task.gen_max_len to generate longer "
                "trees and cut them to task.max_len tokens"
            )
        if self.max_depth < 2 or self.max_args < 2:
            raise DataError(
                f"ListOps needs max_depth >= 2 and max_args >= 2; "
                f"got {self.max_depth}, {self.max_args}"
            )


class _TooLong(Exception):
    """The tree under construction passed max_len (internal control flow)."""


def _grow(out: bytearray, depth: int, rand: Callable[[], float], rules: _Rules) -> int:
    """Append a random LRA subtree at `depth` to `out` as token ids; return its value."""
    if depth > 1 and (depth >= rules.max_depth or rand() >= _OP_P):
        value = int(rand() * 10)
        out.append(_DIGIT0 + value)
        return value
    op = int(rand() * len(OPERATORS))
    out.append(_OP0 + op)
    n_args = 2 + int(rand() * (rules.max_args - 1))
    args = [_grow(out, depth + 1, rand, rules) for _ in range(n_args)]
    out.append(_END)
    if len(out) > rules.max_len:
        raise _TooLong
    return _APPLY[op](args)


def _sample(rand: Callable[[], float], rules: _Rules) -> tuple[bytes, int]:
    """One tree whose length lies in [min_len, max_len], by (early-abort) rejection."""
    for _ in range(_MAX_TRIES):
        out = bytearray()
        try:
            value = _grow(out, 1, rand, rules)
        except _TooLong:
            continue
        if len(out) >= rules.min_len:
            return bytes(out), value
    raise DataError(
        f"no ListOps tree of {rules.min_len}..{rules.max_len} tokens in {_MAX_TRIES} tries with "
        f"max_depth={rules.max_depth}, max_args={rules.max_args}: LRA's rules rarely reach that "
        "length; widen [min_len, max_len] or raise max_depth"
    )


def _generate(n: int, rules: _Rules, seed: np.random.SeedSequence) -> tuple[list[bytes], list[int]]:
    """`n` seeded trees from their own random stream."""
    rand = random.Random(int.from_bytes(seed.generate_state(4).tobytes(), "little")).random
    rows, labels = [], []
    for _ in range(n):
        row, label = _sample(rand, rules)
        rows.append(row)
        labels.append(label)
    return rows, labels


def _read_tsv(path: Path, n: int) -> tuple[list[bytes], list[int]]:
    """The first `n` rows of one LRA ListOps TSV file (Source, Target), checked."""
    fix = "fix or delete that row, or re-extract LRA's lra_release/listops-1000 files"
    with path.open(newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        if next(reader, None) != ["Source", "Target"]:
            raise DataError(f"{path}:1: header must be 'Source<TAB>Target' as in LRA; {fix}")
        rows, labels = [], []
        for row in reader:
            if len(rows) == n:
                break
            ids, label = _parse_row(row, f"{path}:{reader.line_num}", fix)
            rows.append(ids)
            labels.append(label)
    return rows, labels


def _parse_row(row: list[str], where: str, fix: str) -> tuple[bytes, int]:
    """Token ids and label of one TSV row, checking that Target is the Source's value."""
    if len(row) != 2:
        raise DataError(f"{where}: expected 2 tab-separated fields, got {len(row)}; {fix}")
    source, target = row
    try:
        ids = tokenize(source)
        value = evaluate(ids)
    except ValueError as err:
        raise DataError(f"{where}: bad Source ({err}); {fix}") from err
    if target.strip() != str(value):
        raise DataError(f"{where}: Target {target!r} but the Source evaluates to {value}; {fix}")
    return bytes(ids), value


def _read_lra(data_dir: str, sizes: dict[str, int]) -> dict[str, tuple[list[bytes], list[int]]]:
    """LRA's basic_{train,val,test}.tsv from `data_dir`, first n rows of each."""
    root = Path(data_dir).expanduser()
    get = "put LRA's basic_{train,val,test}.tsv there, or set task.data_dir=null to generate"
    if not root.is_dir():
        raise DataError(f"ListOps data_dir {root} is not a directory; {get}")
    out = {}
    for name, n in sizes.items():
        path = root / f"basic_{name}.tsv"
        if not path.is_file():
            raise DataError(f"ListOps file {path} is missing; {get}")
        out[name] = _read_tsv(path, n)
        if len(out[name][1]) < n:
            log.info("%s has %d rows (< %d requested); using all", path, len(out[name][1]), n)
    return out


def _shorten(
    rows: list[bytes], labels: list[int], keep_end: bool, max_len: int
) -> tuple[list[bytes], list[int]]:
    """Rows without `]` unless `keep_end`, then cut to their first `max_len` tokens."""
    if not keep_end:
        rows = [row.replace(_END_BYTE, b"") for row in rows]
    cut = sum(len(row) > max_len for row in rows)
    if cut:
        log.info(
            "ListOps: %d of %d sequences cut to task.max_len=%d tokens", cut, len(rows), max_len
        )
    return [row[:max_len] for row in rows], labels


def _pack(rows: list[bytes], labels: list[int], seq_len: int) -> Split:
    """Right-pad token rows with PAD_ID into an int16 (N, seq_len) tensor."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    x = np.full((len(rows), seq_len), PAD_ID, dtype=np.int16)
    x[np.arange(seq_len) < lengths[:, None]] = np.frombuffer(b"".join(rows), dtype=np.uint8)
    y = torch.tensor(labels, dtype=torch.long)
    return Split(torch.from_numpy(x), y, torch.from_numpy(lengths))


def listops(
    *,
    data_dir: str | None = None,
    n_train: int = 96000,
    n_val: int = 2000,
    n_test: int = 2000,
    min_len: int = 500,
    max_len: int = 2000,
    gen_max_len: int | None = None,
    keep_end: bool = True,
    max_depth: int = 10,
    max_args: int = 10,
    seed: int = 0,
) -> TaskData:
    """LRA ListOps: read LRA's TSV files from `data_dir`, or generate with `seed` if it is None.

    Generation uses min_len..gen_max_len (inclusive token counts; gen_max_len None: max_len),
    max_depth and max_args; each split draws from its own SeedSequence child, so a split does not
    change when another split's size does. Reading takes the first n rows of each file (LRA wrote
    them in arbitrary set order). Then `]` is dropped unless `keep_end`, and every sequence is
    cut to its first `max_len` tokens (Lu et al.: 512, without `]`).
    """
    if max_len < 1:
        raise DataError(f"task.max_len={max_len} must be >= 1 (tokens per sequence)")
    sizes = dict(zip(SPLITS, (n_train, n_val, n_test), strict=True))
    if data_dir is not None:
        data = _read_lra(data_dir, sizes)
    else:
        rules = _Rules(
            min_len, max_len if gen_max_len is None else gen_max_len, max_depth, max_args
        )
        rules.check()
        streams = np.random.SeedSequence(seed).spawn(len(SPLITS))
        start = time.perf_counter()
        data = {
            name: _generate(n, rules, s)
            for (name, n), s in zip(sizes.items(), streams, strict=True)
        }
        log.info("generated ListOps %s in %.1f s", sizes, time.perf_counter() - start)
    data = {
        name: _shorten(rows, labels, keep_end, max_len) for name, (rows, labels) in data.items()
    }
    seq_len = max((len(row) for rows, _ in data.values() for row in rows), default=1)
    splits = {name: _pack(rows, labels, seq_len) for name, (rows, labels) in data.items()}
    spec = TaskSpec(
        name="listops",
        num_classes=NUM_CLASSES,
        input_kind="discrete",
        seq_len=seq_len,
        vocab_size=len(VOCAB),
        pad_id=PAD_ID,
    )
    return TaskData(spec, splits["train"], splits["val"], splits["test"])
