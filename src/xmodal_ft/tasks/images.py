"""Image classification tasks as token sequences: patch / pixel tokenizers and the data loaders.

Every task yields float32 tokens (N, L, D) with pixel values scaled to [0, 1] (8-bit images are
divided by 255, scikit-learn's 4-bit digits by 16); the CIFAR tasks optionally normalise per
channel (`normalize`) and augment training batches (`augment`, applied by the model) as Lu et al.'s
code does. Patch tokens are
flattened ViT-style as in Lu et al.'s code, `b c (h p1) (w p2) -> b (h w) (p1 p2 c)`: patches in
row-major order over the grid, and inside a patch rows, then columns, then channels (channels last).
Raw files are read in their original formats (MNIST IDX, CIFAR-10 python pickles); without a
`data_dir` the images come from the Hugging Face hub.
"""

from __future__ import annotations

import gzip
import logging
import pickle
import zlib
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xmodal_ft.tasks.base import (
    Augment,
    DataError,
    Split,
    TaskData,
    TaskSpec,
    carve_validation,
    subsample,
)

log = logging.getLogger(__name__)

NUM_CLASSES = 10
# ITU-R 601 luma weights, as used by tf.image.rgb_to_grayscale (LRA's CIFAR-10 pipeline).
LUMA_WEIGHTS = (0.2989, 0.5870, 0.1140)
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


# ---- tokenizers -------------------------------------------------------------------------------


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, (H/p)*(W/p), p*p*C) non-overlapping patches, channels last in a patch."""
    if images.ndim != 4:
        raise DataError(f"patchify expects images (N, C, H, W), got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    p = patch_size
    if p < 1 or h % p or w % p:
        raise DataError(f"{h}x{w} images do not split into {p}x{p} patches; pick a divisor of both")
    grid = images.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return grid.reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(
    tokens: torch.Tensor, patch_size: int, channels: int, height: int, width: int
) -> torch.Tensor:
    """Exact inverse of `patchify`: (N, L, p*p*C) -> (N, C, H, W)."""
    p = patch_size
    n = tokens.shape[0]
    expected = (n, (height // p) * (width // p), p * p * channels)
    if tuple(tokens.shape) != expected or height % p or width % p:
        raise DataError(f"tokens {tuple(tokens.shape)} are not {p}x{p} patches of {expected}")
    grid = tokens.reshape(n, height // p, width // p, p, p, channels).permute(0, 5, 1, 3, 2, 4)
    return grid.reshape(n, channels, height, width)


def pixelify(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H*W, C): one token per pixel in row-major order (LRA's sequence)."""
    return patchify(images, 1)


def to_grayscale(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) float RGB -> (N, 1, H, W) luma 0.2989 R + 0.5870 G + 0.1140 B (ITU-R 601).

    Same weights as tf.image.rgb_to_grayscale, but kept as a float (LRA rounds back to 8 bits).
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise DataError(f"to_grayscale expects (N, 3, H, W) images, got {tuple(images.shape)}")
    weights = torch.tensor(LUMA_WEIGHTS, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def normalize(tokens: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean) / std per channel of channels-last tokens (N, L, k·C), in place."""
    view = tokens.view(*tokens.shape[:-1], -1, len(mean))
    view.sub_(torch.tensor(mean)).div_(torch.tensor(std))
    return tokens


def _check_norm(norm: Mapping | None, channels: int) -> None:
    if not norm:
        return
    if set(norm) != {"mean", "std"}:
        raise DataError(
            f"task.normalize must be null or {{mean: [...], std: [...]}} (one value per channel), "
            f"got keys {sorted(norm)}"
        )
    if len(norm["mean"]) != channels or len(norm["std"]) != channels or min(norm["std"]) <= 0:
        raise DataError(
            f"task.normalize needs one mean and one positive std per image channel ({channels}); "
            f"got mean={list(norm['mean'])}, std={list(norm['std'])}"
        )


def _augment(
    images: torch.Tensor, patch_size: int, augment: Mapping | None, norm: Mapping | None
) -> Augment | None:
    """The `Augment` of a task's `augment` node for raw `images` (N, C, H, W); None when off."""
    if not augment:
        return None
    unknown = sorted(set(augment) - {"crop_padding", "flip", "max_rotation"})
    if unknown:
        raise DataError(
            f"unknown task.augment keys {unknown}; use crop_padding, flip, max_rotation"
        )
    channels, height, width = images.shape[1:]
    fill = (0.0,) * channels  # black; after normalisation -mean/std
    if norm:
        fill = tuple(-m / s for m, s in zip(norm["mean"], norm["std"], strict=True))
    return Augment(channels, height, width, patch_size, **augment, fill=fill)


def _patch_tokens(images: torch.Tensor, patch_size: int, max_value: float) -> torch.Tensor:
    return patchify(images, patch_size).float().div_(max_value)


def _gray_pixel_tokens(images: torch.Tensor) -> torch.Tensor:
    return pixelify(to_grayscale(images.float().div_(255.0)))


# ---- builders ---------------------------------------------------------------------------------


def digits(
    *,
    patch_size: int = 2,
    val_size: float = 0.2,
    test_size: float = 0.2,
    split_seed: int = 0,
    n_train: int | None = None,
) -> TaskData:
    """scikit-learn's 8x8 digits (1797 images, ships with the package: offline), 2x2 patches.

    `test_size` is carved from all images, then `val_size` from the rest (fractions or counts).
    """
    from sklearn.datasets import load_digits  # heavy import: only when this task is built

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.uint8)).unsqueeze(1)
    everything = Split(images, torch.from_numpy(bunch.target.astype(np.int64)))
    train, test = carve_validation(everything, test_size, split_seed)
    tokenize = partial(_patch_tokens, patch_size=patch_size, max_value=16.0)
    return _finish("digits", train, test, tokenize, val_size, split_seed, n_train, None)


def mnist(
    *,
    data_dir: str | None = None,
    hub_id: str = "ylecun/mnist",
    patch_size: int = 4,
    val_size: float = 0.1,
    split_seed: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
) -> TaskData:
    """MNIST 28x28 in 4x4 patches: 49 tokens of dim 16; IDX files from `data_dir`, else the hub."""
    if data_dir is None:
        train, test = _from_hub(hub_id, "image", "dir with the MNIST IDX files")
    else:
        train, test = _read_mnist_dir(data_dir, hub_id)
    tokenize = partial(_patch_tokens, patch_size=patch_size, max_value=255.0)
    return _finish("mnist", train, test, tokenize, val_size, split_seed, n_train, n_test)


def cifar10(
    *,
    data_dir: str | None = None,
    hub_id: str = "uoft-cs/cifar10",
    patch_size: int = 4,
    val_size: float = 0.1,
    split_seed: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
    normalize: Mapping[str, Sequence[float]] | None = None,
    augment: Mapping[str, float | bool] | None = None,
) -> TaskData:
    """CIFAR-10 32x32x3 in 4x4 patches: 64 tokens of dim 48 (p1, p2, channel order).

    `normalize` {mean, std} per channel of [0, 1] pixels; `augment` {crop_padding, flip,
    max_rotation}: training batches only (the model applies it).
    """
    _check_norm(normalize, channels=3)
    train, test = _load_cifar(data_dir, hub_id)
    tokenize = partial(_patch_tokens, patch_size=patch_size, max_value=255.0)
    aug = _augment(train.x, patch_size, augment, normalize)
    data = _finish("cifar10", train, test, tokenize, val_size, split_seed, n_train, n_test, aug)
    return _normalized(data, normalize)


def cifar10_lra(
    *,
    data_dir: str | None = None,
    hub_id: str = "uoft-cs/cifar10",
    val_size: float = 0.1,
    split_seed: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
    normalize: Mapping[str, Sequence[float]] | None = None,
    augment: Mapping[str, float | bool] | None = None,
) -> TaskData:
    """LRA's CIFAR-10: grayscale (`to_grayscale`), 1024 pixel tokens of dim 1.

    LRA defines no augmentation (the default); `normalize` and `augment` as in `cifar10`, on the
    grayscale image (Lu et al.'s `cifar10_gray`: mean 0.5, std 0.5).
    """
    _check_norm(normalize, channels=1)
    train, test = _load_cifar(data_dir, hub_id)
    aug = _augment(train.x[:, :1], 1, augment, normalize)
    data = _finish(
        "cifar10_lra", train, test, _gray_pixel_tokens, val_size, split_seed, n_train, n_test, aug
    )
    return _normalized(data, normalize)


def _finish(
    name: str,
    train: Split,
    test: Split,
    tokenize: Callable[[torch.Tensor], torch.Tensor],
    val_size: float,
    split_seed: int,
    n_train: int | None,
    n_test: int | None,
    augment: Augment | None = None,
) -> TaskData:
    """Carve val from raw train, subsample, then tokenize each split (cheaper than the reverse)."""
    train, val = carve_validation(train, val_size, split_seed)
    pool = len(train)
    train, test = subsample(train, n_train, split_seed), subsample(test, n_test, split_seed)
    train, val, test = (Split(tokenize(s.x), s.y) for s in (train, val, test))
    _, seq_len, token_dim = train.x.shape
    spec = TaskSpec(
        name, NUM_CLASSES, "continuous", seq_len=seq_len, token_dim=token_dim, augment=augment
    )
    log.info(
        "%s: %d/%d/%d train/val/test, %d tokens of dim %d",
        name, len(train), len(val), len(test), seq_len, token_dim,
    )  # fmt: skip
    return TaskData(spec, train, val, test, train_pool=pool)


def _normalized(data: TaskData, norm: Mapping[str, Sequence[float]] | None) -> TaskData:
    """`data` with every split normalised by `norm` ({mean, std}), if given."""
    if norm:
        for split in (data.train, data.val, data.test):
            normalize(split.x, norm["mean"], norm["std"])
    return data


# ---- original file formats --------------------------------------------------------------------


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


def _read_mnist_dir(data_dir: str, hub_id: str) -> tuple[Split, Split]:
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


def _load_cifar(data_dir: str | None, hub_id: str) -> tuple[Split, Split]:
    if data_dir is None:
        return _from_hub(hub_id, "img", "dir with the CIFAR-10 python batches")
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


def _from_hub(hub_id: str, image_column: str, local: str) -> tuple[Split, Split]:
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
