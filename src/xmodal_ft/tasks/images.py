"""Image classification tasks as token sequences: patch / pixel tokenizers and the builders.

Every task yields float32 tokens (N, L, D) with pixel values scaled to [0, 1] (8-bit images are
divided by 255, scikit-learn's 4-bit digits by 16); the CIFAR tasks optionally normalise per
channel (`normalize`) and augment training batches (`augment`, applied by the model) as Lu et al.'s
code does. Patch tokens are
flattened ViT-style as in Lu et al.'s code, `b c (h p1) (w p2) -> b (h w) (p1 p2 c)`: patches in
row-major order over the grid, and inside a patch rows, then columns, then channels (channels last).
Raw files are read in their original formats (MNIST IDX, CIFAR-10 python pickles: `image_files`);
without a `data_dir` the images come from the Hugging Face hub.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from functools import partial

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
from xmodal_ft.tasks.image_files import NUM_CLASSES, from_hub, load_cifar, read_mnist_dir

log = logging.getLogger(__name__)

# ITU-R 601 luma weights, as used by tf.image.rgb_to_grayscale (LRA's CIFAR-10 pipeline).
LUMA_WEIGHTS = (0.2989, 0.5870, 0.1140)
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
        train, test = from_hub(hub_id, "image", "dir with the MNIST IDX files")
    else:
        train, test = read_mnist_dir(data_dir, hub_id)
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
    train, test = load_cifar(data_dir, hub_id)
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
    train, test = load_cifar(data_dir, hub_id)
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
