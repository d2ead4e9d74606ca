"""Image tasks: tokenizers, original-format readers (IDX, CIFAR pickles), hub fallback, configs."""

from __future__ import annotations

import gzip
import inspect
import pickle
import sys
import types
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import ROOT, SHARED_DATA
from xmodal_ft.tasks import images
from xmodal_ft.tasks.base import DataError, TaskData
from xmodal_ft.tasks.image_files import CIFAR_FILES, MNIST_FILES, read_cifar_batch, read_idx
from xmodal_ft.tasks.images import patchify, pixelify, to_grayscale, unpatchify

CONF = ROOT / "conf" / "task"
REAL_MNIST = SHARED_DATA / "mnist"
BUILDERS = {
    "digits": images.digits,
    "mnist": images.mnist,
    "cifar10": images.cifar10,
    "cifar10_lra": images.cifar10_lra,
}


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write uint8 `array` in the IDX format (gzipped when the name ends in .gz)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    blob = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(blob) if path.suffix == ".gz" else blob)
    return path


def write_mnist(folder: Path, n_train: int = 20, n_test: int = 6, gz: bool = True) -> dict:
    """Random MNIST-shaped IDX files in `folder`; returns the arrays written."""
    rng = np.random.default_rng(0)
    arrays = {
        MNIST_FILES[0]: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        MNIST_FILES[1]: rng.integers(0, 10, n_train, dtype=np.uint8),
        MNIST_FILES[2]: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        MNIST_FILES[3]: rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        write_idx(folder / (stem + (".gz" if gz else "")), array)
    return arrays


def write_cifar(folder: Path, per_batch: int = 4) -> dict:
    """Tiny CIFAR-10 python batches (data_batch_1..5, test_batch); {name: (data, labels)}."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in CIFAR_FILES:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        written[name] = (data, labels)
    return written


def rows(data: TaskData) -> Counter:
    """Multiset of (tokens, label) over all three splits."""
    return Counter(
        (x.numpy().tobytes(), int(y))
        for s in (data.train, data.val, data.test)
        for x, y in zip(s.x, s.y, strict=True)
    )


# ---- tokenizers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, patch, tokens",
    [((2, 1, 28, 28), 4, (49, 16)), ((2, 3, 32, 32), 4, (64, 48)), ((2, 1, 32, 32), 1, (1024, 1))],
)
def test_patchify_shapes_and_exact_round_trip(shape, patch, tokens):
    x = torch.rand(shape)
    t = patchify(x, patch)
    assert t.shape == (shape[0], *tokens)
    assert torch.equal(unpatchify(t, patch, *shape[1:]), x)


def test_patch_token_is_rows_then_columns_then_channels():
    x = torch.arange(2 * 4 * 4).reshape(1, 2, 4, 4)
    t = patchify(x, 2)
    assert t[0, 0].tolist() == [0, 16, 1, 17, 4, 20, 5, 21]
    assert t[0, 1].tolist() == [2, 18, 3, 19, 6, 22, 7, 23]


def test_pixelify_is_row_major_pixels():
    x = torch.rand(3, 1, 32, 32)
    assert torch.equal(pixelify(x), x.reshape(3, 1024, 1))


def test_patchify_rejects_indivisible_size():
    with pytest.raises(DataError, match=r"28x28 images do not split into 3x3 patches"):
        patchify(torch.rand(1, 1, 28, 28), 3)


def test_grayscale_uses_itu_r_601_luma():
    pixel = torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1, 1)
    assert to_grayscale(pixel).item() == pytest.approx(0.2989 + 0.5 * 0.5870)


# ---- IDX --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["x-idx3-ubyte", "x-idx3-ubyte.gz"])
def test_read_idx_raw_and_gz(tmp_path, name):
    array = np.random.default_rng(0).integers(0, 256, (3, 5, 7), dtype=np.uint8)
    assert np.array_equal(read_idx(write_idx(tmp_path / name, array), ndim=3), array)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda blob: gzip.compress(blob[:-1]), "truncated or corrupt"),
        (lambda blob: gzip.compress(b"\x00\x00\x08\x01" + blob[4:]), "not an IDX file"),
        (lambda blob: gzip.compress(blob)[:-9], "cannot read IDX file"),
        (lambda blob: b"not a gzip file", "cannot read IDX file"),
    ],
)
def test_read_idx_rejects_corrupt_file_naming_it(tmp_path, corrupt, message):
    path = write_idx(tmp_path / "x-idx3-ubyte.gz", np.zeros((2, 4, 4), np.uint8))
    path.write_bytes(corrupt(gzip.decompress(path.read_bytes())))
    with pytest.raises(DataError, match=message) as err:
        read_idx(path, ndim=3)
    assert str(path) in str(err.value)


# ---- CIFAR pickles ----------------------------------------------------------------------------


def test_read_cifar_batch_is_channel_major(tmp_path):
    data, labels = write_cifar(tmp_path)["test_batch"]
    batch = read_cifar_batch(tmp_path / "test_batch")
    assert batch.x.shape == (4, 3, 32, 32) and batch.x.dtype == torch.uint8
    assert batch.x[1, 2, 0, 5].item() == data[1, 2 * 1024 + 5]  # blue plane, row 0, column 5
    assert batch.y.tolist() == labels and batch.y.dtype == torch.long


class _Hostile:
    def __reduce__(self):
        return print, ("this must never run",)


@pytest.mark.parametrize("blob", [b"garbage", pickle.dumps({b"data": _Hostile()}, protocol=2)])
def test_read_cifar_batch_rejects_bad_pickles(tmp_path, blob):
    (tmp_path / "data_batch_1").write_bytes(blob)
    with pytest.raises(DataError, match="cannot read CIFAR-10 batch .*data_batch_1"):
        read_cifar_batch(tmp_path / "data_batch_1")


# ---- builders from data_dir -------------------------------------------------------------------


@pytest.mark.parametrize("gz, subdir", [(True, ""), (False, ""), (True, "MNIST/raw")])
def test_mnist_from_idx_dir(tmp_path, gz, subdir):
    arrays = write_mnist(tmp_path / subdir, gz=gz)
    data = images.mnist(data_dir=str(tmp_path))
    assert (data.spec.seq_len, data.spec.token_dim, data.spec.num_classes) == (49, 16, 10)
    assert data.spec.input_kind == "continuous"
    assert (len(data.train), len(data.val), len(data.test)) == (18, 2, 6)
    assert data.train.x.dtype == torch.float32 and data.train.y.dtype == torch.long
    assert data.train.lengths is None
    restored = unpatchify(data.test.x, 4, 1, 28, 28) * 255
    assert torch.equal(
        restored.round().to(torch.uint8)[:, 0], torch.from_numpy(arrays[MNIST_FILES[2]])
    )
    assert data.test.y.tolist() == arrays[MNIST_FILES[3]].tolist()
    train_labels = sorted(data.train.y.tolist() + data.val.y.tolist())
    assert train_labels == sorted(arrays[MNIST_FILES[1]].tolist())


def test_mnist_subsamples_train_and_test(tmp_path):
    write_mnist(tmp_path)
    data = images.mnist(data_dir=str(tmp_path), n_train=5, n_test=3)
    assert (len(data.train), len(data.val), len(data.test)) == (5, 2, 3)


@pytest.mark.parametrize("subdir", ["", "cifar-10-batches-py"])
def test_cifar10_from_python_batches(tmp_path, subdir):
    written = write_cifar(tmp_path / subdir)
    data = images.cifar10(data_dir=str(tmp_path))
    assert (data.spec.seq_len, data.spec.token_dim) == (64, 48)
    assert (len(data.train), len(data.val), len(data.test)) == (18, 2, 4)
    test_data, test_labels = written["test_batch"]
    restored = unpatchify(data.test.x, 4, 3, 32, 32).reshape(4, 3072) * 255
    assert torch.equal(restored.round().to(torch.uint8), torch.from_numpy(test_data))
    assert data.test.y.tolist() == test_labels


def test_cifar10_lra_is_grayscale_pixels(tmp_path):
    test_data, _ = write_cifar(tmp_path)["test_batch"]
    data = images.cifar10_lra(data_dir=str(tmp_path))
    assert (data.spec.seq_len, data.spec.token_dim) == (1024, 1)
    assert data.test.x.shape == (4, 1024, 1) and data.test.x.dtype == torch.float32
    r, g, b = test_data[0, 5] / 255, test_data[0, 1024 + 5] / 255, test_data[0, 2048 + 5] / 255
    assert data.test.x[0, 5, 0].item() == pytest.approx(0.2989 * r + 0.5870 * g + 0.1140 * b)


@pytest.mark.parametrize("builder", [images.mnist, images.cifar10, images.cifar10_lra])
def test_missing_data_dir_names_the_fix(tmp_path, builder):
    with pytest.raises(DataError, match="does not exist") as err:
        builder(data_dir=str(tmp_path / "nope"))
    assert "task.data_dir=null" in str(err.value) and "task.data_dir=<dir with" in str(err.value)


def test_dir_without_mnist_files_names_expected_files(tmp_path):
    (tmp_path / "readme.txt").write_text("not mnist")
    with pytest.raises(DataError, match="holds none of") as err:
        images.mnist(data_dir=str(tmp_path))
    assert "train-images-idx3-ubyte.gz" in str(err.value) and "ylecun/mnist" in str(err.value)


def test_partial_cifar_dir_names_missing_files(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DataError, match="lacks data_batch_3; set task.data_dir="):
        images.cifar10(data_dir=str(tmp_path))


# ---- hub path (a fake `datasets` module: no network) ------------------------------------------


def fake_datasets(monkeypatch, load_dataset) -> None:
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))


def test_hub_unreachable_says_to_pass_data_dir(monkeypatch):
    def offline(hub_id):
        raise ConnectionError(f"Couldn't reach '{hub_id}' on the Hub (OfflineModeIsEnabled)")

    fake_datasets(monkeypatch, offline)
    with pytest.raises(DataError, match="HF_DATASETS_OFFLINE") as err:
        images.cifar10()
    assert "uoft-cs/cifar10" in str(
        err.value
    ) and "task.data_dir=<dir with the CIFAR-10 python batches>" in str(err.value)


def test_hub_pil_images_become_tokens(monkeypatch):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)

    def split(n):
        return {"img": [Image.fromarray(a) for a in rgb[:n]], "label": list(range(n))}

    fake_datasets(monkeypatch, lambda hub_id: {"train": split(10), "test": split(2)})
    data = images.cifar10()
    assert (len(data.train), len(data.val), len(data.test)) == (9, 1, 2)
    restored = unpatchify(data.test.x, 4, 3, 32, 32) * 255
    assert torch.equal(
        restored.round().to(torch.uint8), torch.from_numpy(rgb[:2]).permute(0, 3, 1, 2)
    )


# ---- digits (offline default) -----------------------------------------------------------------


def test_digits_shapes_and_split_sizes():
    data = images.digits()
    assert (data.spec.seq_len, data.spec.token_dim, data.spec.num_classes) == (16, 4, 10)
    assert (len(data.train), len(data.val), len(data.test)) == (1150, 288, 359)
    assert data.train.x.shape == (1150, 16, 4) and data.train.x.dtype == torch.float32
    assert data.train.x.min() == 0.0 and data.train.x.max() == 1.0


def test_digits_split_is_a_seeded_partition():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    every = patchify(torch.from_numpy(bunch.images).float().unsqueeze(1) / 16, 2)
    expected = Counter(
        (x.numpy().tobytes(), int(y)) for x, y in zip(every, bunch.target, strict=True)
    )
    first, again, other = images.digits(), images.digits(), images.digits(split_seed=1)
    assert rows(first) == expected  # disjoint and complete
    assert torch.equal(first.test.x, again.test.x) and torch.equal(first.train.y, again.train.y)
    assert not torch.equal(first.test.x, other.test.x)


def test_digits_n_train_subsamples_after_validation():
    data = images.digits(n_train=100)
    assert (len(data.train), len(data.val), len(data.test)) == (100, 288, 359)


# ---- configs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_config_matches_builder_defaults(name):
    params = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    assert params.pop("name") == name
    assert params.pop("_target_") == f"xmodal_ft.tasks.images.{name}"
    params.pop("defaults")  # the schema: derived from the builder (xmodal_ft.config)
    defaults = {p.name: p.default for p in inspect.signature(BUILDERS[name]).parameters.values()}
    assert params == defaults


# ---- real data --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not REAL_MNIST.is_dir(), reason=f"no MNIST IDX files at {REAL_MNIST}")
def test_real_mnist_from_idx_files():
    data = images.mnist(data_dir=str(REAL_MNIST))
    assert (len(data.train), len(data.val), len(data.test)) == (54000, 6000, 10000)
    assert data.test.x.shape == (10000, 49, 16)
    assert torch.bincount(data.test.y).tolist()[:2] == [980, 1135]
