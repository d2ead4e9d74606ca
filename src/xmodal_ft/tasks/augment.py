"""CIFAR normalisation and training-time augmentation as batch tensor ops (no torchvision).

Lu et al.'s CIFAR pipelines (universal-computation `datasets/cifar10.py`, `cifar10_gray.py`):
`ToTensor → RandomCrop(32, padding=4) → RandomHorizontalFlip → RandomRotation(20) → Normalize`,
augmentation on training batches only. Normalisation is applied once to every split's tokens by
the task builder (`images.normalize`); `ImageAugment` redoes the random part on each training
batch inside the model: tokens → images → one gather per batch (shift by the crop, flip, rotate
about the centre, nearest pixel) → tokens. Pixels from outside the image are black, i.e. `fill` =
the normalised value of 0, exactly as padding before normalising. Random draws (crop offsets,
flips, angles) come from the global CPU generator, seeded by the run's seed and saved in
checkpoints, so a batch is augmented identically on CPU and CUDA and after a resume.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from xmodal_ft.tasks.base import Augment
from xmodal_ft.tasks.images import patchify, unpatchify


class ImageAugment(nn.Module):
    """Random crop-with-padding, horizontal flip and rotation of a batch of image tokens."""

    draws_random = True  # from the global generator, in forward (lockstep refuses it)

    def __init__(self, spec: Augment):
        super().__init__()
        self.spec = spec
        rows, cols = torch.meshgrid(
            torch.arange(spec.height), torch.arange(spec.width), indexing="ij"
        )
        self.register_buffer("rows", rows.flatten().float(), persistent=False)
        self.register_buffer("cols", cols.flatten().float(), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Augmented tokens of the same shape; one random draw per image."""
        s = self.spec
        n = len(tokens)
        shift, flip, angle = self.draw(n)
        source = self.source_index(shift.to(tokens.device), flip.to(tokens.device),
                                   angle.to(tokens.device))  # fmt: skip
        images = unpatchify(tokens, s.patch_size, s.channels, s.height, s.width)
        images = images.reshape(n, s.channels, -1)
        picked = images.gather(2, source.clamp(min=0)[:, None, :].expand_as(images))
        fill = torch.tensor(s.fill, dtype=tokens.dtype, device=tokens.device).view(1, -1, 1)
        images = torch.where(source[:, None, :] >= 0, picked, fill)
        return patchify(images.view(n, s.channels, s.height, s.width), s.patch_size)

    def draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per image: (dy, dx) shift, flip flag, angle in radians; from the global CPU RNG."""
        s = self.spec
        shift = torch.randint(-s.crop_padding, s.crop_padding + 1, (n, 2))
        flip = torch.rand(n) < 0.5 if s.flip else torch.zeros(n, dtype=torch.bool)
        angle = (torch.rand(n) * 2 - 1) * math.radians(s.max_rotation)
        return shift, flip, angle

    def source_index(
        self, shift: torch.Tensor, flip: torch.Tensor, angle: torch.Tensor
    ) -> torch.Tensor:
        """(N, H·W) flat index of the source pixel of every output pixel; -1 outside the image.

        Output pixel (r, c) is rotated back about the centre, un-flipped, then shifted by the
        crop: source = crop⁻¹(flip⁻¹(rotate⁻¹(r, c))), rounded to the nearest pixel.
        """
        s = self.spec
        cy, cx = (s.height - 1) / 2, (s.width - 1) / 2
        y, x = self.rows[None] - cy, self.cols[None] - cx
        cos, sin = torch.cos(angle)[:, None], torch.sin(angle)[:, None]
        y, x = cos * y - sin * x + cy, sin * y + cos * x + cx
        x = torch.where(flip[:, None], s.width - 1 - x, x)
        y = torch.round(y + shift[:, :1]).long()
        x = torch.round(x + shift[:, 1:]).long()
        inside = (y >= 0) & (y < s.height) & (x >= 0) & (x < s.width)
        return torch.where(inside, y * s.width + x, -1)
