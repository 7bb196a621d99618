import math

import pytest
import torch

from md4.core.schedules import MaskingSchedule, PolynomialSchedule, get_schedule

NAMES = ["linear", "cosine", "poly2", "poly0.5", "poly3.7", "geometric"]


@pytest.mark.parametrize("name", NAMES)
def test_alpha_monotone_with_clamped_end_points(name):
    s = get_schedule(name)
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)
    a = s.alpha(t)
    assert torch.all(a[1:] <= a[:-1])
    assert a[0] == pytest.approx(1 - s.eps, abs=1e-4)  # geometric: 1 - beta_min away
    assert a[-1] == pytest.approx(s.eps, abs=1e-8)
    assert torch.all((a > 0) & (a < 1))


@pytest.mark.parametrize("name", NAMES)
def test_dalpha_matches_finite_differences(name):
    s = get_schedule(name)
    t = torch.linspace(0.02, 0.98, 97, dtype=torch.float64)
    h = 1e-6
    fd = (s.alpha(t + h) - s.alpha(t - h)) / (2 * h)
    assert torch.allclose(s.dalpha(t), fd, rtol=1e-5, atol=1e-7)


def test_weights_equal_closed_forms():
    eps = 1e-4
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    c = 1 - 2 * eps
    linear = -c / (c * t + eps)
    assert torch.allclose(get_schedule("linear").weight(t), linear, rtol=1e-12)
    k = 2.5
    poly = -c * k * t ** (k - 1) / (c * t**k + eps)
    assert torch.allclose(get_schedule("poly2.5").weight(t), poly, rtol=1e-12)
    cos = -c * (math.pi / 2) * torch.sin(math.pi / 2 * (1 - t)) / (c * torch.cos(math.pi / 2 * (1 - t)) + eps)
    assert torch.allclose(get_schedule("cosine").weight(t), cos, rtol=1e-10)
    # With a vanishing clamp the linear weight is -1/t.
    tt = torch.linspace(0.1, 1, 10, dtype=torch.float64)
    assert torch.allclose(get_schedule("linear", eps=1e-12).weight(tt), -1 / tt)


@pytest.mark.parametrize("name", NAMES + ["poly0.01", "poly50"])
def test_weight_finite_everywhere(name):
    s = get_schedule(name)
    for dtype in (torch.float32, torch.float64):
        t = torch.cat([torch.tensor([0.0, 1e-30, 1e-8, 1.0]), torch.rand(100)]).to(dtype)
        for v in (s.alpha(t), s.dalpha(t), s.weight(t), s.log_snr(t)):
            assert torch.isfinite(v).all()
        assert torch.all(s.weight(t) <= 0)


def test_poly_parses_any_real_power():
    assert isinstance(get_schedule("poly2.5"), PolynomialSchedule)
    assert get_schedule("poly.5").power == 0.5
    assert get_schedule("poly3").name == "poly3"


@pytest.mark.parametrize("bad", ["", "quadratic", "poly", "poly-1", "poly0", "polyx"])
def test_unknown_schedule_lists_valid_names(bad):
    with pytest.raises(ValueError, match="valid names are: linear, cosine, geometric, polyK"):
        get_schedule(bad)


@pytest.mark.parametrize("eps", [0.7, 0.5, 0.0, -1e-4])
def test_bad_eps(eps):
    with pytest.raises(ValueError, match=r"eps must be in \(0, 0.5\)"):
        get_schedule("linear", eps=eps)


def test_schedule_is_a_module_owned_by_the_model():
    """The schedule is a submodule: it moves with the model and its (future learnable) state is in the state dict."""
    from md4 import MD4

    model = MD4(lambda z, t: None, vocab_size=3, schedule="cosine", eps=1e-3)
    assert isinstance(model.schedule, torch.nn.Module) and model.schedule in list(model.modules())
    assert model.schedule.eps == 1e-3 and not model.schedule.per_token
    built = get_schedule("poly2", eps=2e-4)
    assert MD4(lambda z, t: None, vocab_size=3, schedule=built).schedule is built
    with pytest.raises(ValueError, match="eps belongs to the schedule"):
        MD4(lambda z, t: None, vocab_size=3, schedule=built, eps=1e-4)


@pytest.mark.parametrize("name", ["linear", "cosine", "poly2", "poly0.5", "poly3.7", "geometric"])
def test_the_closed_form_inverse_of_alpha_is_the_bisections(name):
    """Each family's closed-form inverse agrees with bisection (to its 1e-7 at the flat, ill-conditioned ends),
    maps back onto the target to float64 precision, and clamps beyond alpha's range as bisection does."""
    schedule = get_schedule(name)
    inner = torch.linspace(0.0, 1.0, 2001, dtype=torch.float64)
    targets = torch.cat([inner, torch.tensor([-0.1, 1e-4, 1e-4 + 1e-12, 1 - 1e-4 - 1e-12, 1 - 1e-4, 1.1])])
    closed, bisected = schedule.inverse_alpha(targets), schedule.bisect_alpha(targets)
    assert closed.dtype == torch.float64 and torch.allclose(closed, bisected, rtol=0, atol=1e-7)
    ends = schedule.alpha(torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert torch.allclose(schedule.alpha(closed), targets.clamp(*ends), rtol=0, atol=1e-14)
    assert closed[-6].item() == 1.0 and closed[-1].item() == 0.0


def test_a_family_without_a_closed_form_inverse_bisects():
    class Squared(MaskingSchedule):
        name = "squared"

        def raw_alpha(self, t):
            return (1.0 - t) ** 2

        def raw_dalpha(self, t):
            return -2.0 * (1.0 - t)

    targets = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)
    raw = ((targets - 1e-4) / (1 - 2e-4)).clamp(0, 1)
    assert torch.allclose(Squared().inverse_alpha(targets), 1.0 - raw.sqrt(), rtol=0, atol=1e-8)  # flat at t = 1
