"""Extension by config (docs/extending.md): a task is one module plus one YAML whose `_target_`
names it. The worked example (GLUE RTE) trains offline on saved pairs; a task of a package of
one's own composes from its own config dir and is checked against its builder's signature."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from conftest import CONF, ROOT, make_cfg, read_results
from xmodal_ft import run, tasks
from xmodal_ft.tasks import DataError

PAIRS = [
    ("a cat sat on the mat .", "a cat sat .", 0),
    ("it rained all day .", "it was dry .", 1),
    ("she won the race .", "she took part .", 0),
    ("no one came .", "many came .", 1),
]


def save_rte(directory: Path, n_train: int = 24, n_dev: int = 8) -> Path:
    """RTE-shaped pairs saved as `datasets.load_dataset("nyu-mll/glue", "rte").save_to_disk`."""
    import datasets

    def split(n: int) -> datasets.Dataset:
        rows = [PAIRS[i % len(PAIRS)] for i in range(n)]
        s1, s2, label = (list(column) for column in zip(*rows, strict=True))
        return datasets.Dataset.from_dict({"sentence1": s1, "sentence2": s2, "label": label})

    datasets.DatasetDict({"train": split(n_train), "validation": split(n_dev)}).save_to_disk(
        directory
    )
    return directory


def test_rte_builds_from_a_saved_copy_as_sentence_pairs(tmp_path, tiny_bert_text) -> None:
    cfg = make_cfg("task=rte", f"task.source={save_rte(tmp_path / 'rte')}", "task.val_size=4")
    data = tasks.build(cfg.task, tokenizer=str(tiny_bert_text))
    assert (len(data.train), len(data.val), len(data.test)) == (20, 4, 8)
    assert data.spec.input_kind == "text" and data.spec.num_classes == 2
    cls, sep = 2, 3  # the tiny tokenizer's [CLS] and [SEP] (glue_helpers.VOCAB)
    row, length = data.test.x[0], int(data.test.lengths[0])
    assert row[0] == cls and (row[:length] == sep).sum() == 2 and row[length - 1] == sep
    assert torch.equal(data.test.y, torch.tensor([p[2] for p in PAIRS] * 2))


def test_rte_trains_a_few_steps_by_its_target(tmp_path, tiny_bert_text) -> None:
    cfg = make_cfg("task=rte", f"task.source={save_rte(tmp_path / 'rte')}", "task.val_size=4",
                   "model=tiny_bert", f"model.path={tiny_bert_text}",
                   "variant=unfrozen_pretrained", "max_steps=2", "eval_every=1")  # fmt: skip
    assert cfg.task._target_ == "xmodal_ft.tasks.rte.rte"
    val = run(cfg, run_dir=tmp_path / "run")
    results = read_results(tmp_path / "run")
    assert results["val/acc"] == val and results["steps"] == 2


def test_rte_offline_without_a_copy_names_the_fix(tiny_bert_text) -> None:
    with pytest.raises(DataError, match=r"cannot load RTE from nyu-mll/glue .*task.source=<a dir"):
        tasks.build(make_cfg("task=rte").task, tokenizer=str(tiny_bert_text))


def test_the_worked_example_in_the_docs_is_the_shipped_task() -> None:
    doc = (ROOT / "docs" / "extending.md").read_text()
    blocks = re.findall(r"```(?:python|yaml)\n(.*?)```", doc, flags=re.S)
    module = (ROOT / "src" / "xmodal_ft" / "tasks" / "rte.py").read_text()
    code = module[module.index("from pathlib") :]

    def lines(text: str) -> list[str]:  # code lines without comments and formatter pragmas
        kept = (re.sub(r"\s+#.*$", "", line).rstrip() for line in text.splitlines())
        return [line for line in kept if line.strip() and not line.lstrip().startswith("#")]

    assert lines(blocks[0]) == lines(code)
    yaml_lines = lines(blocks[1])
    assert all(line in (Path(CONF) / "task" / "rte.yaml").read_text() for line in yaml_lines)
    assert (len(lines(blocks[0])), len(yaml_lines)) == (28, 3)  # the count the docs give


def test_a_task_of_ones_own_package_needs_only_its_module_and_yaml(tmp_path, monkeypatch) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "my_tasks.py").write_text(textwrap.dedent('''
        import torch
        from xmodal_ft.tasks.base import Split, TaskData, TaskSpec

        def sign(*, n: int = 64, dim: int = 3) -> TaskData:
            """Label: is the sum of the first feature positive."""
            g = torch.Generator().manual_seed(0)
            def split(m):
                x = torch.randn(m, 8, dim, generator=g)
                return Split(x, (x[:, :, 0].sum(1) > 0).long())
            spec = TaskSpec("sign", 2, "continuous", seq_len=8, token_dim=dim)
            return TaskData(spec, split(n), split(32), split(32))
    '''))  # fmt: skip
    (tmp_path / "conf" / "task").mkdir(parents=True)
    (tmp_path / "conf" / "task" / "sign.yaml").write_text(
        "_target_: my_tasks.sign\nname: sign\nn: 48\n"
    )
    monkeypatch.syspath_prepend(str(package))
    overrides = ["task=sign", f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
                 "model=tiny_gpt2", "variant=unfrozen_random", "max_steps=2", "eval_every=1",
                 "progress=false", "cache_dir=null"]  # fmt: skip
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    run(cfg, run_dir=tmp_path / "run")
    assert read_results(tmp_path / "run")["config"]["task"] == {
        "_target_": "my_tasks.sign", "name": "sign", "n": 48
    }  # fmt: skip
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        bad = compose(config_name="config", overrides=[*overrides, "task.n=many"])
    with pytest.raises(
        DataError, match=r"task sign \(my_tasks.sign\): .*'many'.*keys are .*n, dim"
    ):
        run(bad, run_dir=tmp_path / "bad")  # checked against the signature before building
    assert not (tmp_path / "bad").exists()
