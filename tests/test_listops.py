"""ListOps: generator rules, labels by an independent evaluator, seeding, LRA TSV reading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from xmodal_ft.tasks.base import DataError, Split
from xmodal_ft.tasks.listops import END, OPERATORS, PAD_ID, VOCAB, evaluate, listops, tokenize

TINY = dict(n_train=50, n_val=10, n_test=10, min_len=20, max_len=60, max_depth=4, max_args=5)
REDUCE = {
    "[MIN": min,
    "[MAX": max,
    "[MED": lambda a: int(np.median(a)),
    "[SM": lambda a: sum(a) % 10,
}


def parse(tokens: list[str]) -> tuple[int | tuple[str, list], list[str]]:
    """A tree (value, or (operator, children)) from the front of `tokens`, and the rest."""
    head, rest = tokens[0], tokens[1:]
    if head not in REDUCE:
        return int(head), rest
    children = []
    while rest[0] != END:
        child, rest = parse(rest)
        children.append(child)
    return (head, children), rest[1:]


def value(tree: int | tuple[str, list]) -> int:
    return tree if isinstance(tree, int) else REDUCE[tree[0]]([value(c) for c in tree[1]])


def depth(tree: int | tuple[str, list]) -> int:
    return 1 if isinstance(tree, int) else 1 + max(depth(c) for c in tree[1])


def arities(tree: int | tuple[str, list]) -> list[int]:
    if isinstance(tree, int):
        return []
    return [len(tree[1]), *(a for c in tree[1] for a in arities(c))]


def rows(split: Split) -> list[list[str]]:
    """Each row's tokens up to its length."""
    return [[VOCAB[i] for i in x[:n].tolist()] for x, n in zip(split.x, split.lengths, strict=True)]


def lra_source(tree: int | tuple[str, list]) -> str:
    """LRA's to_string: the tuple encoding ((op, a1), a2)..., END) with a `( … )` per pair."""
    if isinstance(tree, int):
        return str(tree)
    op, (first, *rest) = tree
    text = "( " * (len(rest) + 2) + f"{op} {lra_source(first)} )"
    return text + "".join(f" {lra_source(c)} )" for c in rest) + " ] )"


def write_tsv(directory: Path, lines: dict[str, list[str]]) -> Path:
    """LRA's files as csv.writer(delimiter='\\t') writes them: header, CRLF line ends."""
    directory.mkdir(exist_ok=True)
    for name, body in lines.items():
        text = "".join(f"{line}\r\n" for line in ["Source\tTarget", *body])
        (directory / f"basic_{name}.tsv").write_text(text, newline="")
    return directory


@pytest.fixture(scope="module")
def tiny():
    return listops(**TINY, seed=0)


def test_generated_trees_obey_depth_arity_and_length_window(tiny) -> None:
    for split in (tiny.train, tiny.val, tiny.test):
        for tokens in rows(split):
            tree, rest = parse(tokens)
            assert rest == [] and tokens[-1] == END
            assert depth(tree) <= TINY["max_depth"]
            assert all(2 <= a <= TINY["max_args"] for a in arities(tree))
            assert TINY["min_len"] <= len(tokens) <= TINY["max_len"]


def test_labels_match_an_independent_evaluator(tiny) -> None:
    for split in (tiny.train, tiny.val, tiny.test):
        expected = [value(parse(tokens)[0]) for tokens in rows(split)]
        assert split.y.tolist() == expected
        assert [evaluate(tokenize(" ".join(tokens))) for tokens in rows(split)] == expected


def test_spec_dtypes_and_right_padding(tiny) -> None:
    spec, train = tiny.spec, tiny.train
    assert (spec.name, spec.input_kind, spec.num_classes) == ("listops", "discrete", 10)
    assert (spec.vocab_size, spec.pad_id) == (len(VOCAB), PAD_ID) == (16, 0)
    assert spec.seq_len == max(int(s.lengths.max()) for s in (tiny.train, tiny.val, tiny.test))
    assert (train.x.dtype, train.y.dtype, train.lengths.dtype) == (
        torch.int16,
        torch.long,
        torch.long,
    )
    assert train.x.shape == (TINY["n_train"], spec.seq_len)
    positions = torch.arange(spec.seq_len)
    assert bool(((train.x == PAD_ID) == (positions >= train.lengths[:, None])).all())


def test_same_seed_is_identical_and_another_seed_differs(tiny) -> None:
    again, other = listops(**TINY, seed=0), listops(**TINY, seed=1)
    assert torch.equal(again.train.x, tiny.train.x) and torch.equal(again.test.y, tiny.test.y)
    assert not torch.equal(other.train.x[:, :20], tiny.train.x[:, :20])


def test_each_split_has_its_own_random_stream(tiny) -> None:
    bigger = listops(**{**TINY, "n_train": 80}, seed=0)
    assert torch.equal(bigger.val.x[:, : tiny.spec.seq_len], tiny.val.x)
    assert torch.equal(bigger.train.y[:50], tiny.train.y)


def test_long_sequences_are_not_truncated_at_512() -> None:
    data = listops(n_train=2, n_val=1, n_test=1, min_len=600, max_len=800, seed=0)
    assert data.spec.seq_len > 512 and bool((data.train.lengths >= 600).all())
    for tokens, label in zip(rows(data.train), data.train.y.tolist(), strict=True):
        assert tokens[-1] == END and value(parse(tokens)[0]) == label


@pytest.mark.parametrize(
    "source, expected",
    [
        ("[MAX 2 9 ]", 9),
        ("[MIN 3 [MAX 1 7 ] ]", 3),
        ("[MED 1 2 3 4 ]", 2),  # int(np.median) of 2.5
        ("[MED 9 1 5 ]", 5),
        ("[SM 5 7 9 ]", 1),
        ("( ( ( [SM 5 ) 7 ) ] )", 2),
    ],
)
def test_evaluate_known_expressions(source: str, expected: int) -> None:
    assert evaluate(tokenize(source)) == expected


@pytest.mark.parametrize("source", ["[MAX 2 9", "2 3", "]", "[MIN ]", ""])
def test_evaluate_rejects_malformed_expressions(source: str) -> None:
    with pytest.raises(ValueError, match="ListOps"):
        evaluate(tokenize(source))


def test_tokenize_drops_grouping_parentheses_and_rejects_unknown_tokens() -> None:
    assert tokenize("( ( ( [MAX 2 ) 9 ) ] )") == tokenize("[MAX 2 9 ]") == [12, 3, 10, 15]
    assert set(VOCAB) == {"<pad>", *"0123456789", *OPERATORS, END}
    with pytest.raises(ValueError, match="unknown token 'MAX'"):
        tokenize("MAX 2 9")


def test_reader_matches_generator_on_lra_formatted_files(tiny, tmp_path: Path) -> None:
    lines = {}
    for name in ("train", "val", "test"):
        split = getattr(tiny, name)
        pairs = zip(rows(split), split.y.tolist(), strict=True)
        lines[name] = [f"{lra_source(parse(tokens)[0])}\t{y}" for tokens, y in pairs]
    assert lines["train"][0].startswith("( ( ")
    read = listops(**TINY, data_dir=str(write_tsv(tmp_path / "lra", lines)))
    for name in ("train", "val", "test"):
        mine, theirs = getattr(read, name), getattr(tiny, name)
        assert torch.equal(mine.x, theirs.x) and torch.equal(mine.y, theirs.y)
        assert torch.equal(mine.lengths, theirs.lengths)


def test_reader_takes_the_first_n_rows(tmp_path: Path) -> None:
    real = "( ( ( ( [MAX 1 ) 7 ) 2 ) ] )\t7"  # a row in LRA's published format
    lines = {"train": [real, "( ( ( [MIN 4 ) 8 ) ] )\t4", "( ( ( [SM 4 ) 8 ) ] )\t2"]}
    data = listops(
        data_dir=str(write_tsv(tmp_path, {**lines, "val": [real], "test": [real]})), n_train=2
    )
    assert data.train.y.tolist() == [7, 4] and data.test.y.tolist() == [7]
    assert data.train.x[0].tolist() == [12, 2, 8, 3, 15] and data.spec.seq_len == 5


@pytest.mark.parametrize(
    "row, message",
    [
        ("( ( ( [MAX 2 ) x ) ] )\t9", r"basic_val.tsv:3: bad Source \(unknown token 'x'"),
        (
            "( ( ( [MAX 2 ) 9 ) ] )\tnine",
            r"basic_val.tsv:3: Target 'nine' but the Source evaluates",
        ),
        ("( ( ( [MAX 2 ) 9 ) ] )\t3", "basic_val.tsv:3: Target '3' but the Source evaluates to 9"),
        ("( ( [MAX 2 ) 9 )\t9", r"basic_val.tsv:3: bad Source \(a ListOps expression must"),
        ("( ( ( [MAX 2 ) 9 ) ] )", "basic_val.tsv:3: expected 2 tab-separated fields, got 1"),
    ],
)
def test_bad_rows_name_file_line_and_fix(tmp_path: Path, row: str, message: str) -> None:
    good = "( ( ( [MIN 4 ) 8 ) ] )\t4"
    write_tsv(tmp_path, {"train": [good], "val": [good, row], "test": [good]})
    with pytest.raises(DataError, match=message) as err:
        listops(data_dir=str(tmp_path))
    assert "fix or delete that row" in str(err.value)


def test_missing_dir_file_or_header_raise_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is not a directory; put LRA's basic_"):
        listops(data_dir=str(tmp_path / "nowhere"))
    write_tsv(tmp_path, {"train": ["[MAX 2 9 ]\t9"]})
    with pytest.raises(DataError, match="basic_val.tsv is missing; .*task.data_dir=null"):
        listops(data_dir=str(tmp_path))
    (tmp_path / "basic_val.tsv").write_text("src\ttgt\n")
    with pytest.raises(DataError, match="basic_val.tsv:1: header must be 'Source<TAB>Target'"):
        listops(data_dir=str(tmp_path))


@pytest.mark.parametrize(
    "rules, message",
    [
        (dict(min_len=60, max_len=20), "min_len <= max_len"),
        (dict(max_depth=1), "max_depth >= 2"),
        (dict(min_len=50, max_len=60, max_depth=2, max_args=3), "widen \\[min_len, max_len\\]"),
    ],
)
def test_impossible_generator_settings_raise_data_error(rules: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        listops(**{**TINY, **rules})
