"""Image datasets in their original file formats, checked as they are read: MNIST's IDX files
(raw or gzipped), CIFAR-10's python pickles (numpy arrays only: a hostile pickle runs no code),
and the Hugging Face hub's copies where no `data_dir` is given."""

from __future__ import annotations

import gzip
import pickle
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xmodal_ft.tasks.base import DataError, Split

NUM_CLASSES = 10
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
# Globals a CIFAR-10 pickle may name: numpy array reconstruction (and the bytes encoding of
# pickle protocol 2 under Python 3), never arbitrary code.
_PICKLE_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """An unsigned-byte IDX array (raw or .gz): magic 0x0000 0x08 <ndim>, big-endian int32 dims."""
    path = Path(path)
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"cannot read IDX file {path} ({err}); re-download it") from err
    header = 4 + 4 * ndim
    magic = 0x0800 + ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        raise DataError(
            f"{path} is not an IDX file of {ndim}-d bytes (magic {magic}); re-download it"
        )
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if len(raw) != header + int(np.prod(dims)):
        raise DataError(
            f"IDX file {path} holds {len(raw) - header} bytes of data but its header declares "
            f"{dims}; the file is truncated or corrupt, re-download it"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims).copy()


def read_cifar_batch(path: str | Path) -> Split:
    """A CIFAR-10 python batch (b"data": (N, 3072) uint8 channel-major, b"labels") as NCHW."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            batch = _NumpyOnlyUnpickler(f, encoding="bytes").load()
        data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"], dtype=np.int64)
    except Exception as err:  # any parse failure means the file is not a CIFAR-10 batch
        raise DataError(f"cannot read CIFAR-10 batch {path} ({err!r}); re-download it") from err
    if (
        data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3072
        or len(labels) != len(data)
    ):
        raise DataError(
            f"CIFAR-10 batch {path} has data {data.dtype}{data.shape} and {len(labels)} labels; "
            "expected uint8 (N, 3072) and N labels"
        )
    return _split(data.reshape(-1, 3, 32, 32), labels, path)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists and numpy arrays only: a hostile pickle cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data file")
        return super().find_class(module, name)


def read_mnist_dir(data_dir: str, hub_id: str) -> tuple[Split, Split]:
    hint = (
        f"set task.data_dir=<dir with {', '.join(f + '.gz' for f in MNIST_FILES)} (gzipped or "
        f"raw)> or task.data_dir=null to load {hub_id} from the hub"
    )
    folder = _find_folder(data_dir, ("MNIST/raw",), MNIST_FILES, hint)
    train_x, train_y, test_x, test_y = (_existing(folder, stem) for stem in MNIST_FILES)
    return _read_mnist_pair(train_x, train_y), _read_mnist_pair(test_x, test_y)


def _read_mnist_pair(images_path: Path, labels_path: Path) -> Split:
    images, labels = read_idx(images_path, ndim=3), read_idx(labels_path, ndim=1)
    if len(images) != len(labels):
        raise DataError(f"{images_path} has {len(images)} images but {labels_path} {len(labels)}")
    return _split(images[:, None], labels, labels_path)


def load_cifar(data_dir: str | None, hub_id: str) -> tuple[Split, Split]:
    if data_dir is None:
        return from_hub(hub_id, "img", "dir with the CIFAR-10 python batches")
    hint = (
        f"set task.data_dir=<dir with {', '.join(CIFAR_FILES)} (the cifar-10-batches-py "
        f"folder of cifar-10-python.tar.gz)> or task.data_dir=null to load {hub_id} from the hub"
    )
    folder = _find_folder(data_dir, ("cifar-10-batches-py",), CIFAR_FILES, hint)
    batches = [read_cifar_batch(folder / name) for name in CIFAR_FILES]
    train = Split(torch.cat([b.x for b in batches[:-1]]), torch.cat([b.y for b in batches[:-1]]))
    return train, batches[-1]


def _find_folder(
    data_dir: str, subdirs: tuple[str, ...], stems: tuple[str, ...], hint: str
) -> Path:
    """`data_dir` or the first of its `subdirs` holding any of `stems`; all must be there."""
    root = Path(data_dir).expanduser()
    for folder in (root, *(root / s for s in subdirs)):
        missing = [stem for stem in stems if _existing(folder, stem) is None]
        if len(missing) < len(stems):
            if missing:
                raise DataError(f"{folder} lacks {', '.join(missing)}; {hint}")
            return folder
    state = "does not exist" if not root.is_dir() else f"holds none of {', '.join(stems)}"
    raise DataError(f"task.data_dir {root} {state}; {hint}")


def _existing(folder: Path, stem: str) -> Path | None:
    """`folder/stem` or `folder/stem.gz`, whichever exists."""
    return next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)


def _split(images: np.ndarray, labels: np.ndarray, source: str | Path) -> Split:
    """A raw split: uint8 (N, C, H, W) images and long labels, checked to lie in 0..9."""
    if len(labels) and not 0 <= labels.min() <= labels.max() < NUM_CLASSES:
        raise DataError(f"{source} has labels outside 0..{NUM_CLASSES - 1}; re-download it")
    return Split(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)))


# ---- Hugging Face hub -------------------------------------------------------------------------


def from_hub(hub_id: str, image_column: str, local: str) -> tuple[Split, Split]:
    """The train and test splits of `hub_id` (columns `image_column`, "label") as raw splits."""
    import datasets  # slow import: only when the hub is used

    try:
        dataset = datasets.load_dataset(hub_id)
    except Exception as err:  # offline, unknown id, auth, ...: the same fix applies
        raise DataError(
            f"could not load {hub_id} from the Hugging Face hub ({err}); the hub cannot be reached "
            f"or HF_DATASETS_OFFLINE / HF_HUB_OFFLINE is set: pass task.data_dir=<{local}>, a "
            "local copy in the original format"
        ) from err
    return tuple(_hub_split(dataset, hub_id, name, image_column) for name in ("train", "test"))


def _hub_split(dataset: Any, hub_id: str, name: str, image_column: str) -> Split:
    if name not in dataset:
        raise DataError(f"{hub_id} has no {name!r} split; pass task.data_dir=<local copy> instead")
    images = np.stack([np.asarray(img, dtype=np.uint8) for img in dataset[name][image_column]])
    nchw = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    labels = np.asarray(dataset[name]["label"], dtype=np.int64)
    return _split(np.ascontiguousarray(nchw), labels, f"{hub_id} {name}")
