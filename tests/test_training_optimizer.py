"""The optimiser: the learning-rate schedule, AdamW's parameter groups (weight decay by scope, parameters a model
kind trains at their own rate), the fused kernel choice and the EMA."""

import pytest
import torch
from torch import nn

from md4.config import build_config
from md4.core.kind_contract import ModelKindContract
from md4.training import EMA, learning_rate, parameter_groups
from md4.training.optimizer import build_optimizer, fused_optimizer, set_learning_rate


class KindWithOwnRate(nn.Module, ModelKindContract):
    """A model kind whose ``theta`` trains at its own peak rate of 0.5 (as GenMD4's schedule with theta_lr)."""

    kind = "own-rate"

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.theta = nn.Parameter(torch.zeros(4))
        self.norm = nn.LayerNorm(2)

    def loss(self, x, labels=None, generator=None, shard=None):
        raise NotImplementedError

    def nelbo(self, x, labels=None, num_steps=None, generator=None, shard=None):
        raise NotImplementedError

    def own_learning_rates(self):
        return [([self.theta], 0.5)]


def test_learning_rate_warmup_then_cosine():
    t = build_config(
        "shakespeare-char", ["train.steps=110", "train.warmup_steps=10", "train.lr=1.0", "train.min_lr_ratio=0.1"]
    ).train
    assert learning_rate(0, t) == pytest.approx(0.1) and learning_rate(9, t) == pytest.approx(1.0)
    assert learning_rate(10, t) == pytest.approx(1.0)
    assert learning_rate(60, t) == pytest.approx(0.55)
    assert learning_rate(110, t) == pytest.approx(0.1)
    values = [learning_rate(s, t) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_ema_update_is_an_exponential_average():
    module = torch.nn.Linear(3, 2, bias=False)
    ema = EMA(module, decay=0.9)
    start = module.weight.detach().clone()
    with torch.no_grad():
        module.weight.add_(1.0)
    ema.update(module)
    assert torch.allclose(ema.module.weight, start + 0.1)
    assert not ema.module.weight.requires_grad


def test_weight_decay_scope_and_clipping_switch():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    every = parameter_groups(model, 0.1, "all", 1e-3)
    assert len(every) == 1 and len(every[0]["params"]) == 4 and every[0]["weight_decay"] == 0.1
    matrices, rest = parameter_groups(model, 0.1, "matrices", 1e-3)
    assert [p.dim() for p in matrices["params"]] == [2] and rest["weight_decay"] == 0.0 and len(rest["params"]) == 3


def test_parameters_at_their_own_rate_get_the_last_group():
    model = KindWithOwnRate()
    every = parameter_groups(model, 0.1, "all", 1e-3)
    assert [len(g["params"]) for g in every] == [4, 1] and every[1]["params"][0] is model.theta
    assert every[1]["lr_scale"] == pytest.approx(500.0) and every[1]["weight_decay"] == 0.1
    assert all(p is not model.theta for p in every[0]["params"])
    matrices, rest, own = parameter_groups(model, 0.1, "matrices", 1e-3)
    assert matrices["params"] == [model.linear.weight]
    assert rest["params"] == [model.linear.bias, model.norm.weight, model.norm.bias]
    assert own["params"] == [model.theta] and own["weight_decay"] == 0.0 and "lr_scale" not in rest


def test_a_module_outside_the_kind_contract_has_no_own_rates():
    model = nn.Linear(3, 2)
    model.theta = nn.Parameter(torch.zeros(2))
    assert [len(g["params"]) for g in parameter_groups(model, 0.0, "all", 1e-3)] == [3]


def test_the_optimizer_follows_the_config_and_scales_its_own_rates():
    t = build_config("shakespeare-char", ["train.lr=0.01", "train.beta2=0.95", "train.weight_decay_scope=all"]).train
    optimizer = build_optimizer(KindWithOwnRate(), t, torch.device("cpu"), sharded=False)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"]
    assert optimizer.defaults["betas"] == (0.9, 0.95)
    set_learning_rate(optimizer, 0.002)
    assert [g["lr"] for g in optimizer.param_groups] == [0.002, pytest.approx(0.002 * 50.0)]


def test_fused_adamw_where_the_kernel_takes_the_tensors():
    cpu, cuda, mps = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
    assert fused_optimizer(cpu, sharded=False) and not fused_optimizer(cpu, sharded=True)
    assert fused_optimizer(cuda, sharded=True) and not fused_optimizer(mps, sharded=False)
