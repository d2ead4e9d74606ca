"""Task data types shared by every task family: a spec and three in-memory tensor splits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from xmodal_ft.errors import UserError

InputKind = Literal["continuous", "discrete", "text"]


class DataError(UserError, ValueError):
    """Bad or missing task data; the message names the fix."""


@dataclass(frozen=True)
class Augment:
    """Random training-time image transforms and the geometry of the image behind the tokens."""

    channels: int
    height: int
    width: int
    patch_size: int
    crop_padding: int = 0  # RandomCrop(size, padding): shifts by -padding..padding pixels
    flip: bool = False  # RandomHorizontalFlip(0.5)
    max_rotation: float = 0.0  # RandomRotation(degrees): uniform in ±degrees
    fill: tuple[float, ...] = (0.0,)  # per channel: a black pixel after normalisation


@dataclass(frozen=True)
class TaskSpec:
    """What a model needs to know about a task's inputs and outputs.

    input_kind: "continuous" (x is float (N, L, token_dim)), "discrete" (x is integer (N, L) over
    `vocab_size` task tokens), "text" (x is integer (N, L) ids of the model's own tokenizer);
    consumers cast integer inputs with `.long()` per batch. `augment`: image transforms the
    model applies to training batches (tasks.augment.ImageAugment), or None.
    """

    name: str
    num_classes: int
    input_kind: InputKind
    seq_len: int
    token_dim: int = 0
    vocab_size: int = 0
    pad_id: int = 0
    metrics: tuple[str, ...] = ("acc",)
    augment: Augment | None = None


@dataclass
class Split:
    """One split kept in memory. `lengths` is set for right-padded variable-length inputs."""

    x: torch.Tensor
    y: torch.Tensor
    lengths: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.y)

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise DataError(f"split has {len(self.x)} inputs but {len(self.y)} labels")


@dataclass
class TaskData:
    spec: TaskSpec
    train: Split
    val: Split
    test: Split
    train_pool: int | None = None  # training examples before `task.n_train` subsampling

    @property
    def full_train_size(self) -> int:
        """The training set's size before subsampling: what an epoch of the papers covers."""
        return self.train_pool or len(self.train)


def carve_validation(split: Split, val_size: int | float, seed: int) -> tuple[Split, Split]:
    """Split `val_size` examples (a count, or a fraction if < 1) off `split` with a fixed seed."""
    n = len(split)
    n_val = int(round(val_size * n)) if val_size < 1 else int(val_size)
    if not 0 < n_val < n:
        raise DataError(
            f"val_size={val_size} leaves no train or no validation data from {n} examples"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return _take(split, perm[n_val:]), _take(split, perm[:n_val])


def _take(split: Split, idx: torch.Tensor) -> Split:
    lengths = None if split.lengths is None else split.lengths[idx]
    return Split(split.x[idx], split.y[idx], lengths)


def subsample(split: Split, n: int | None, seed: int) -> Split:
    """At most `n` examples of `split` (all if n is None), chosen with a fixed seed."""
    if n is None or n >= len(split):
        return split
    perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    return _take(split, perm[:n])
