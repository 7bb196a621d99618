"""CPU tests of the MD4 transformer denoiser (method file s.8; docs/architecture.md contracts)."""

from __future__ import annotations

import pytest
import torch

from md4.nn import Transformer, TransformerConfig
from md4.nn.transformer import apply_rope, rope_angles

V = 11


def tiny(**overrides) -> TransformerConfig:
    cfg = dict(vocab_size=V, dim=32, n_layers=2, n_heads=4)
    cfg.update(overrides)
    return TransformerConfig(**cfg)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every weight off its (partly zero) init so that all paths are active."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model


def inputs(b: int = 3, shape: tuple[int, ...] = (8,), seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randint(0, V + 1, (b, *shape), generator=gen)
    t = torch.rand(b, generator=gen)
    return z, t


@pytest.mark.parametrize("shape", [(8,), (4, 4, 3)])
def test_output_shape_dtype_and_no_mask_logit(shape):
    torch.manual_seed(0)
    model = Transformer(tiny())
    z, t = inputs(shape=shape)
    out = model(z, t)
    assert out.shape == (3, *shape, V)
    assert out.dtype == torch.float32
    assert model.vocab_size == V


def test_adaln_zero_starts_uniform_then_learns():
    torch.manual_seed(0)
    model = Transformer(tiny())
    z, t = inputs()
    assert torch.count_nonzero(model(z, t)) == 0
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss = torch.nn.functional.cross_entropy(model(z, t).flatten(0, 1), z.flatten().clamp(max=V - 1))
    loss.backward()
    opt.step()
    assert torch.count_nonzero(model(z, t)) > 0


def test_time_independent_ignores_t():
    model = randomize(Transformer(tiny(time_conditioning="none")))
    assert model.time_independent
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    z, t = inputs()
    torch.testing.assert_close(model(z, t), model(z, 1 - t), rtol=0, atol=0)


def test_adaln_zero_depends_on_t():
    model = randomize(Transformer(tiny()))
    assert not model.time_independent
    z, t = inputs()
    assert not torch.allclose(model(z, t), model(z, 1 - t))


def test_bidirectional_last_token_affects_first_position():
    model = randomize(Transformer(tiny())).eval()
    z, t = inputs()
    z2 = z.clone()
    z2[:, -1] = (z[:, -1] + 1) % (V + 1)
    out, out2 = model(z, t), model(z2, t)
    assert not torch.allclose(out[:, 0], out2[:, 0])


def test_rope_scores_depend_only_on_offset():
    gen = torch.Generator().manual_seed(0)
    head_dim = 16
    q, k = torch.randn(2, head_dim, generator=gen, dtype=torch.float64)

    def score(m: int, n: int) -> torch.Tensor:
        cos, sin = rope_angles(torch.tensor([m, n]), head_dim)
        rq = apply_rope(q[None].expand(2, -1), cos.double(), sin.double())[0]
        rk = apply_rope(k[None].expand(2, -1), cos.double(), sin.double())[1]
        return rq @ rk

    for m, n, s in [(0, 3, 5), (7, 2, 11), (4, 4, 100)]:
        torch.testing.assert_close(score(m, n), score(m + s, n + s), rtol=1e-5, atol=1e-5)
    assert not torch.isclose(score(0, 3), score(0, 4))
    # a rotation: norms are preserved
    cos, sin = rope_angles(torch.arange(5), head_dim)
    x = torch.randn(5, head_dim, generator=gen)
    torch.testing.assert_close(apply_rope(x, cos, sin).norm(dim=-1), x.norm(dim=-1))


def test_class_conditioning():
    model = randomize(Transformer(tiny(num_classes=4)))
    z, t = inputs()
    a = model(z, t, torch.tensor([0, 1, 2]))
    b = model(z, t, torch.tensor([3, 3, 3]))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="labels"):
        model(z, t)
    with pytest.raises(ValueError, match="labels"):
        model(z, t, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        Transformer(tiny())(z, t, torch.tensor([0, 1, 2]))


def test_class_only_conditioning_is_time_independent_adaln():
    model = randomize(Transformer(tiny(num_classes=4, time_conditioning="none")))
    assert model.time_independent
    assert any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    z, t = inputs()
    y = torch.tensor([0, 1, 2])
    torch.testing.assert_close(model(z, t, y), model(z, 1 - t, y), rtol=0, atol=0)
    assert not torch.allclose(model(z, t, y), model(z, t, y.flip(0)))


def test_bf16_autocast_close_to_float32():
    model = randomize(Transformer(tiny()), seed=1).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    z, t = inputs()
    ref = model(z, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(z, t)
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out).all()
    err = (out.float() - ref).abs().max() / ref.abs().max()
    assert err < 0.05, err


@pytest.mark.parametrize("dim,expected", [(32, 96), (48, 128), (64, 192), (768, 2048), (100, 288)])
def test_mlp_hidden_rounding(dim, expected):
    cfg = TransformerConfig(vocab_size=V, dim=dim, n_heads=2)
    assert cfg.mlp_hidden == expected
    assert cfg.mlp_hidden % 32 == 0 and cfg.mlp_hidden >= 8 * dim / 3 > cfg.mlp_hidden - 32


@pytest.mark.parametrize("mlp_type", ["glu", "swiglu", "geglu"])
def test_mlp_types_run(mlp_type):
    model = randomize(Transformer(tiny(mlp_type=mlp_type)))
    z, t = inputs()
    assert torch.isfinite(model(z, t)).all()


def test_outside_embed_runs():
    model = randomize(Transformer(tiny(outside_embed_dim=8)))
    z, t = inputs()
    assert model(z, t).shape == (3, 8, V)


def test_release_text8_parameter_count():
    cfg = TransformerConfig.release_text8()
    v, e, d, n_layers, h = 27, 64, 768, 12, 2048
    assert (cfg.vocab_size, cfg.outside_embed_dim, cfg.dim, cfg.n_layers) == (v, e, d, n_layers)
    assert cfg.mlp_hidden == h  # 8 * 768 / 3 = 2048, already a multiple of 32
    embed = (v + 1) * e + e * d  # small token table (incl. mask id) + projection to width
    time_mlp = 256 * d + d * d  # sinusoidal features -> d -> d, no biases
    block = 3 * d * d + d * d + 3 * d * h + 6 * d * d  # qkv, out, w1/w3/w2, adaLN modulation
    final = 2 * d * d + d * v  # final adaLN (shift, scale) + logits
    expected = embed + time_mlp + n_layers * block + final
    with torch.device("meta"):  # count without allocating 129M floats
        count = Transformer(cfg).num_parameters()
    print(f"release text8 parameters: {count:,}")
    assert count == expected


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    for cfg in (tiny(num_classes=3, outside_embed_dim=8), tiny(time_conditioning="none")):
        model = Transformer(cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        labels = torch.tensor([0, 1, 2]) if cfg.num_classes else None
        for step in range(3):
            z, t = inputs(seed=step)
            opt.zero_grad()
            logits = model(z, t, labels)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), z.flatten() % V)
            loss.backward()
            opt.step()
        for name, p in model.named_parameters():
            assert p.grad is not None, name
            assert torch.count_nonzero(p.grad) > 0, name


def test_bad_inputs_raise():
    model = Transformer(tiny())
    z, t = inputs()
    with pytest.raises(ValueError, match="integer"):
        model(z.float(), t)
    with pytest.raises(ValueError, match="2 dims"):
        model(z[0], t[:1])
    with pytest.raises(ValueError, match=r"t must have shape"):
        model(z, t[:2])
    with pytest.raises(ValueError, match=r"t must have shape"):
        model(z, t[:, None])


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(mlp_type="relu"), "glu"),
        (dict(time_conditioning="film"), "adaln_zero"),
        (dict(dim=30, n_heads=4), "divisible"),
        (dict(dim=12, n_heads=4), "even"),
    ],
)
def test_bad_config_raises(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny(**overrides)


def test_rope_alone_cannot_tell_positions_in_an_all_mask_input_but_max_positions_can():
    """All-mask input: RoPE-only outputs are identical at every position; learned positions break the tie."""
    z = torch.full((2, 6), 5)
    t = torch.tensor([1.0, 1.0])
    for max_positions, expect_equal in ((None, True), (8, False)):
        torch.manual_seed(0)
        model = Transformer(
            TransformerConfig(
                vocab_size=5, dim=32, n_layers=2, n_heads=4, time_conditioning="none", max_positions=max_positions
            )
        )
        torch.nn.init.normal_(model.logits.weight, std=0.5)
        out = model(z, t)
        assert torch.allclose(out[:, :1].expand_as(out), out, atol=1e-5) == expect_equal
    with pytest.raises(ValueError, match="max_positions"):
        model(torch.full((1, 9), 5), torch.tensor([0.5]))


def test_narrow_conditioning_width_parameter_count():
    """cond_dim = 128 (as in MDLM/SEDD) shrinks every adaLN modulation to 128 -> 6d."""
    cfg = TransformerConfig.release_text8(cond_dim=128)
    v, e, d, n_layers, h, c = 27, 64, 768, 12, 2048, 128
    block = 3 * d * d + d * d + 3 * d * h + 6 * d * c
    expected = (v + 1) * e + e * d + 256 * c + c * c + n_layers * block + 2 * c * d + d * v
    with torch.device("meta"):
        assert Transformer(cfg).num_parameters() == expected
    model = Transformer(tiny(cond_dim=8, num_classes=3))
    z, t = inputs()
    assert model(z, t, labels=torch.tensor([0, 1, 2])).shape == (3, 8, V)
