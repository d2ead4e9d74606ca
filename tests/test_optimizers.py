"""scheme.optimizer: Adam (default) or plain SGD for fixed, discriminative and gradual_unfreeze;
nesterov is always SGD with Nesterov momentum."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import SIGN, make_cfg, tiny_model
from xmodal_ft import schemes
from xmodal_ft.schemes import SchemeConfig, SchemeError


def scheme(*overrides: str) -> SchemeConfig:
    return SchemeConfig(**make_cfg(*overrides).scheme)


@pytest.mark.parametrize(
    "option, kind",
    [("fixed", torch.optim.Adam), ("discriminative", torch.optim.Adam),
     ("gradual_unfreeze", torch.optim.Adam), ("nesterov", torch.optim.SGD)],
)  # fmt: skip
def test_each_scheme_config_keeps_its_optimizer(option: str, kind: type) -> None:
    optimizer = schemes.build(tiny_model(), scheme(f"scheme={option}"), lr=0.01).optimizer
    assert type(optimizer) is kind


def test_plain_sgd_steps_by_lr_times_gradient() -> None:
    model = tiny_model()
    plan = schemes.build(model, scheme("scheme.optimizer=sgd"), lr=0.5)
    assert type(plan.optimizer) is torch.optim.SGD
    assert plan.optimizer.defaults["momentum"] == 0 and not plan.optimizer.defaults["nesterov"]
    x, y = torch.randn(8, SIGN.seq_len, SIGN.token_dim), torch.randint(0, 2, (8,))
    F.cross_entropy(model.eval()(x), y).backward()
    before = {n: (p.detach().clone(), p.grad.clone()) for n, p in model.named_parameters()}
    plan.optimizer.step()
    for name, param in model.named_parameters():
        value, grad = before[name]
        torch.testing.assert_close(param.detach(), value - 0.5 * grad, rtol=0, atol=1e-7)


def test_discriminative_sgd_keeps_the_per_layer_lrs() -> None:
    cfg = SchemeConfig("discriminative", decay=0.5, optimizer="sgd")
    optimizer = schemes.build(tiny_model(), cfg, lr=1.0).optimizer
    assert type(optimizer) is torch.optim.SGD
    assert [g["lr"] for g in optimizer.param_groups] == [0.125, 0.25, 0.5, 1.0]


def test_gradual_unfreeze_sgd() -> None:
    cfg = SchemeConfig("gradual_unfreeze", optimizer="sgd")
    plan = schemes.build(tiny_model(), cfg, lr=0.01)
    assert type(plan.optimizer) is torch.optim.SGD
    assert [e.epoch for e in plan.unfreeze] == [3, 2, 1, 0]  # bottom, layer.0, layer.1, top


def test_nesterov_with_adam_names_the_fix() -> None:
    with pytest.raises(SchemeError, match="scheme.optimizer=sgd, or scheme=fixed scheme.optim"):
        schemes.build(tiny_model(), scheme("scheme=nesterov", "scheme.optimizer=adam"), lr=0.01)


def test_unknown_optimizer_lists_the_choices() -> None:
    with pytest.raises(SchemeError, match="unknown scheme.optimizer 'adamw'; choose one of: adam"):
        schemes.build(tiny_model(), SchemeConfig(optimizer="adamw"), lr=0.01)
