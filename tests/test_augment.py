"""CIFAR normalisation and augmentation (Lu et al.'s pipeline) as seeded batch tensor ops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import Interrupt, KillAt, make_cfg, read_results, tiny_model
from test_images import write_cifar
from xmodal_ft import run, schemes
from xmodal_ft.engine import FitConfig, fit
from xmodal_ft.tasks import images
from xmodal_ft.tasks.augment import ImageAugment
from xmodal_ft.tasks.base import Augment, DataError, Split, TaskData, TaskSpec

MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]  # Lu et al.'s cifar10.py
LU = {"crop_padding": 4, "flip": True, "max_rotation": 20}
NORM = {"mean": MEAN, "std": STD}


def test_normalize_is_per_channel_on_channels_last_tokens(tmp_path) -> None:
    write_cifar(tmp_path)
    plain = images.cifar10(data_dir=str(tmp_path))
    normed = images.cifar10(data_dir=str(tmp_path), normalize=NORM)
    for a, b in ((plain.train, normed.train), (plain.val, normed.val), (plain.test, normed.test)):
        expected = (a.x.view(len(a), 64, 16, 3) - torch.tensor(MEAN)) / torch.tensor(STD)
        torch.testing.assert_close(b.x, expected.view(len(a), 64, 48))
    assert normed.spec.augment is None  # normalising alone augments nothing


def test_augment_spec_knows_the_image_and_black_after_normalising(tmp_path) -> None:
    write_cifar(tmp_path)
    spec = images.cifar10(data_dir=str(tmp_path), normalize=NORM, augment=LU).spec
    assert spec.augment == Augment(3, 32, 32, 4, 4, True, 20, tuple(-m / s for m, s in zip(
        MEAN, STD, strict=True)))  # fmt: skip
    gray = images.cifar10_lra(data_dir=str(tmp_path), normalize={"mean": [0.5], "std": [0.5]},
                              augment=LU).spec.augment  # fmt: skip
    assert (gray.channels, gray.patch_size, gray.fill) == (1, 1, (-1.0,))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"normalize": {"mean": [0.5]}}, "task.normalize must be null or"),
        (
            {"normalize": {"mean": [0.5], "std": [0.5]}},
            "one mean and one positive std per image channel \\(3\\)",
        ),
        ({"augment": {"crop": 4}}, "unknown task.augment keys \\['crop'\\]"),
    ],
)
def test_bad_normalize_or_augment_names_the_key(tmp_path, kwargs: dict, message: str) -> None:
    write_cifar(tmp_path)
    with pytest.raises(DataError, match=message):
        images.cifar10(data_dir=str(tmp_path), **kwargs)


# ---- the random transforms, with draws fixed by hand -------------------------------------------

SPEC = Augment(channels=2, height=6, width=6, patch_size=2, crop_padding=2, flip=True,
               max_rotation=20, fill=(-1.0, -2.0))  # fmt: skip


def augment_with(images_: torch.Tensor, shift, flip, degrees) -> torch.Tensor:
    """`ImageAugment(SPEC)` on images (N, 2, 6, 6) with the given draws instead of random ones."""
    module = ImageAugment(SPEC)
    n = len(images_)
    module.draw = lambda _: (
        torch.tensor(shift).view(n, 2),
        torch.tensor(flip).view(n),
        torch.tensor(degrees, dtype=torch.float32).view(n) * math.pi / 180,
    )
    out = module(images.patchify(images_, 2))
    return images.unpatchify(out, 2, 2, 6, 6)


def pad_crop(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """torchvision's RandomCrop(6, padding=2) at offset (2 + dy, 2 + dx), with SPEC's fill."""
    fill = torch.tensor(SPEC.fill).view(1, 2, 1, 1)
    padded = F.pad(img - fill, (2, 2, 2, 2)) + fill
    return padded[:, :, 2 + dy : 8 + dy, 2 + dx : 8 + dx]


IMG = torch.arange(72, dtype=torch.float32).view(1, 2, 6, 6)


@pytest.mark.parametrize("dy, dx", [(0, 0), (2, -1), (-2, 2), (1, 0)])
def test_shift_is_a_crop_of_the_padded_image(dy: int, dx: int) -> None:
    assert torch.equal(augment_with(IMG, [dy, dx], [False], [0.0]), pad_crop(IMG, dy, dx))


def test_flip_mirrors_columns_after_the_crop() -> None:
    out = augment_with(IMG, [1, -2], [True], [0.0])
    assert torch.equal(out, pad_crop(IMG, 1, -2).flip(-1))


def test_right_angles_rotate_exactly_and_small_angles_move_pixels() -> None:
    assert torch.equal(augment_with(IMG, [0, 0], [False], [90.0]), torch.rot90(IMG, -1, (2, 3)))
    assert torch.equal(augment_with(IMG, [0, 0], [False], [-90.0]), torch.rot90(IMG, 1, (2, 3)))
    turned = augment_with(IMG, [0, 0], [False], [20.0])
    assert not torch.equal(turned, IMG)
    assert torch.equal(turned[:, :, 2:4, 2:4], IMG[:, :, 2:4, 2:4])  # the centre stays


def test_draws_cover_the_configured_ranges() -> None:
    torch.manual_seed(0)
    shift, flip, angle = ImageAugment(SPEC).draw(4000)
    assert sorted(shift.unique().tolist()) == [-2, -1, 0, 1, 2]
    assert 0.45 < flip.float().mean() < 0.55
    assert angle.abs().max() <= math.radians(20) and angle.abs().max() > math.radians(19.9)


def test_same_seed_same_batch_other_seed_differs() -> None:
    tokens = images.patchify(torch.rand(8, 2, 6, 6), 2)
    outs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        outs.append(ImageAugment(SPEC)(tokens))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


@pytest.mark.gpu
def test_cuda_batch_is_augmented_exactly_as_on_cpu() -> None:
    tokens = images.patchify(torch.rand(8, 2, 6, 6), 2)
    torch.manual_seed(0)
    cpu = ImageAugment(SPEC)(tokens)
    torch.manual_seed(0)
    cuda = ImageAugment(SPEC).cuda()(tokens.cuda())
    assert torch.equal(cuda.cpu(), cpu)


# ---- in the model: training batches only ------------------------------------------------------

AUG_SPEC = TaskSpec("img", num_classes=2, input_kind="continuous", seq_len=9, token_dim=8,
                    augment=SPEC)  # fmt: skip


def test_model_augments_in_training_only() -> None:
    model = tiny_model("tiny_gpt2", AUG_SPEC)
    seen = []
    model.input_layer.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    tokens = images.patchify(torch.rand(4, 2, 6, 6), 2)
    model.eval()(tokens)
    model.train()(tokens)
    assert torch.equal(seen[0], tokens) and not torch.equal(seen[1], tokens)


def augmented_task(n: int = 64) -> TaskData:
    g = torch.Generator().manual_seed(0)

    def split(m: int) -> Split:
        x = torch.rand(m, 2, 6, 6, generator=g)
        return Split(images.patchify(x, 2), (x[:, 0].mean(dim=(1, 2)) > 0.5).long())

    return TaskData(AUG_SPEC, split(n), split(32), split(32))


def test_resumed_fit_with_augmentation_matches_uninterrupted(tmp_path) -> None:
    cfg = FitConfig(batch_size=8, max_steps=12, eval_every=4, checkpoint_every=4, progress=False)

    def train(path=None, tracker=None):
        model = tiny_model("tiny_gpt2", AUG_SPEC)  # seeds the global RNG: the augment draws
        plan = schemes.build(model, schemes.SchemeConfig(), lr=3e-3)
        return model, fit(model, plan, augmented_task(), cfg, tracker, path)

    model_ref, ref = train()
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(Interrupt):
        train(path, KillAt(6))
    torch.manual_seed(123)
    model, resumed = train(path)
    assert resumed.history == ref.history and resumed.test == ref.test
    for p, q in zip(model.parameters(), model_ref.parameters(), strict=True):
        assert torch.equal(p, q)


def test_cifar_run_with_lu_normalisation_and_augmentation(tmp_path) -> None:
    data_dir = tmp_path / "cifar"
    write_cifar(data_dir, per_batch=8)
    cfg = make_cfg(
        "task=cifar10", f"task.data_dir={data_dir}", f"task.normalize={{mean:{MEAN},std:{STD}}}",
        "task.augment={crop_padding:4,flip:true,max_rotation:20}", "variant=unfrozen_random",
        "max_steps=4", "eval_every=2",
    )  # fmt: skip
    val = run(cfg, run_dir=tmp_path / "run")
    assert read_results(tmp_path / "run")["val/acc"] == val
