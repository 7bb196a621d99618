"""Attention dropout on the CPU (md4.nn.attention): the mask's rate, independence and exact unbiasedness, the
dropped attention and its gradients against a float64 reference, and the fused kernels everywhere else."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from md4.nn.attention import KEEP_LEVELS, attention, dropped_attention, keep_mask

CPU = torch.device("cpu")


@pytest.mark.parametrize("p", [0.02, 0.05, 0.3, 0.9])
def test_the_mask_keeps_each_element_with_the_rounded_probability(p):
    torch.manual_seed(0)
    keep, scale = keep_mask((64, 129, 130), p, CPU)  # an odd count: the last 64-bit draw is used in part
    exact = round((1 - p) * KEEP_LEVELS) / KEEP_LEVELS
    assert keep.shape == (64, 129, 130) and keep.dtype == torch.bool
    assert abs(exact - (1 - p)) <= 0.5 / KEEP_LEVELS and scale * exact == pytest.approx(1.0, abs=1e-15)
    rate, n = keep.double().mean().item(), keep.numel()
    assert abs(rate - exact) < 5 * math.sqrt(exact * (1 - exact) / n)


def test_the_four_lanes_of_a_draw_and_neighbouring_elements_are_independent():
    torch.manual_seed(1)
    keep = keep_mask((1 << 20,), 0.5, CPU)[0].double()
    lanes = keep.view(-1, 4)  # the four 16-bit lanes of each 64-bit draw
    centred = lanes - lanes.mean(0)
    correlation = (centred.T @ centred) / len(lanes) / lanes.var(0).sqrt().outer(lanes.var(0).sqrt())
    off_diagonal = correlation - torch.eye(4, dtype=torch.float64)
    assert off_diagonal.abs().max() < 5 / math.sqrt(len(lanes))
    assert (lanes.mean(0) - 0.5).abs().max() < 5 * 0.5 / math.sqrt(len(lanes))


def reference(q, k, v, keep, scale):
    probs = torch.softmax(q.double() @ k.double().transpose(-2, -1) / math.sqrt(q.shape[-1]), -1)
    return (probs * keep * scale) @ v.double()


def test_dropped_attention_and_its_gradients_are_the_reference():
    torch.manual_seed(2)
    q, k, v = (torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    keep, scale = keep_mask((2, 3, 5, 5), 0.3, CPU)
    torch.testing.assert_close(dropped_attention(q, k, v, keep, scale), reference(q, k, v, keep, scale))
    assert torch.autograd.gradcheck(lambda *qkv: dropped_attention(*qkv, keep, scale), (q, k, v))


def test_dropped_attention_is_unbiased():
    """E[dropped attention] = attention: the mean over many masks comes to the fused kernel's output."""
    torch.manual_seed(3)
    q, k, v = (torch.randn(1, 2, 6, 8) for _ in range(3))
    draws = torch.stack([attention(q, k, v, 0.3, training=True) for _ in range(4000)])
    spread = draws.std(0) / math.sqrt(len(draws))
    assert ((draws.mean(0) - F.scaled_dot_product_attention(q, k, v)).abs() < 5 * spread + 1e-6).all()


def test_bf16_dropped_attention_is_within_bf16_rounding_of_float32():
    torch.manual_seed(4)
    q, k, v = (torch.randn(2, 2, 16, 8) for _ in range(3))
    keep, scale = keep_mask((2, 2, 16, 16), 0.1, CPU)
    low = dropped_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), keep, scale).float()
    torch.testing.assert_close(low, reference(q, k, v, keep, scale).float(), rtol=0.03, atol=0.03)


def test_without_dropout_or_outside_training_it_is_the_fused_kernel():
    torch.manual_seed(5)
    q, k, v = (torch.randn(2, 2, 7, 8) for _ in range(3))
    fused = F.scaled_dot_product_attention(q, k, v)
    for dropout, training in ((0.0, True), (0.3, False), (0.0, False)):
        assert torch.equal(attention(q, k, v, dropout, training), fused)
    assert not torch.equal(attention(q, k, v, 0.3, True), fused)
