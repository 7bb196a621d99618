"""CPU tests of the MD4 transformer denoiser (Shi et al. 2024; the release's text networks; docs/guide.md)."""

from __future__ import annotations

import math

import pytest
import torch

from md4.nn import Transformer, TransformerConfig
from md4.nn.contract import DenoiserCapabilities
from md4.nn.transformer import ChannelDropout, apply_rope, rope_angles, timestep_embedding

V = 11


def tiny(**overrides) -> TransformerConfig:
    cfg = {"vocab_size": V, "dim": 32, "n_layers": 2, "n_heads": 4}
    cfg.update(overrides)
    return TransformerConfig(**cfg)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every weight off its (partly zero) init so that all paths are active."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model


def release_tiny(**overrides) -> TransformerConfig:
    """A small network with every release option switched on."""
    cfg = {
        "mlp_type": "glu",
        "cond_dim": 8,
        "time_features": 16,
        "time_hidden": 24,
        "cond_bias": True,
        "modulation_act": "mlp",
        "outside_embed_dim": 8,
        "embed_bias": True,
        "embed_dropout": False,
        "channel_dropout": True,
        "dropout": 0.1,
        "attn_dropout": 0.1,
        "init": "release",
    }
    cfg.update(overrides)
    return tiny(**cfg)


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
    assert model.capabilities == DenoiserCapabilities(
        select=True, select_index=True, time_independent=True, checkpointing=True
    )
    assert not Transformer.capabilities.time_independent  # declared per instance, from the config
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    z, t = inputs()
    torch.testing.assert_close(model(z, t), model(z, 1 - t), rtol=0, atol=0)


def test_adaln_zero_depends_on_t():
    model = randomize(Transformer(tiny()))
    assert not model.capabilities.time_independent
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
    assert model.capabilities.time_independent
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


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    for cfg in (tiny(num_classes=3, outside_embed_dim=8), tiny(time_conditioning="none"), release_tiny(num_classes=3)):
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
        ({"mlp_type": "relu"}, "glu"),
        ({"time_conditioning": "film"}, "adaln_zero"),
        ({"dim": 30, "n_heads": 4}, "divisible"),
        ({"dim": 12, "n_heads": 4}, "even"),
        ({"modulation_act": "relu"}, "modulation_act"),
        ({"init": "xavier"}, "init"),
        ({"time_features": 2}, "time_features"),
        ({"time_features": 15}, "time_features"),
        ({"time_hidden": 0}, "time_hidden"),
        ({"attn_dropout": 1.0}, "attn_dropout"),
        ({"attn_dropout": -0.1}, "attn_dropout"),
        ({"dropout": 1.0}, "dropout"),
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


def count(cfg: TransformerConfig) -> int:
    with torch.device("meta"):  # count without allocating the weights
        return Transformer(cfg).num_parameters()


def release_count(v: int, e: int | None, d: int = 768, n_layers: int = 12, h: int = 2048, c: int = 64) -> int:
    """Parameters of the release's text network: outside embedding (or full width), time MLP 64 -> 256 -> c,
    blocks with biased adaLN modulations c -> 6d, final adaLN c -> 2d and untied logits."""
    embed = (v + 1) * d if e is None else (v + 1) * e + e * d + d
    time_mlp = 64 * 256 + 256 + 256 * c + c
    block = 3 * d * d + d * d + 3 * d * h + c * 6 * d + 6 * d  # qkv, out, w1/w3/w2, modulation
    return embed + time_mlp + n_layers * block + c * 2 * d + 2 * d + d * v


def test_release_text8_parameter_count():
    cfg = TransformerConfig.release_text8()
    assert (cfg.vocab_size, cfg.outside_embed_dim, cfg.dim, cfg.n_layers, cfg.n_heads) == (27, 64, 768, 12, 12)
    assert cfg.mlp_hidden == 2048  # int(8 * 768 / 3) = 2048, already a multiple of 32
    assert (cfg.conditioning_width, cfg.time_features, cfg.time_hidden) == (64, 64, 256)
    assert (cfg.dropout, cfg.attn_dropout) == (0.05, 0.05)
    n = count(cfg)
    print(f"release text8 parameters: {n:,}")
    assert n == 88_734_272 == release_count(27, 64)


def test_release_openwebtext_parameter_count():
    cfg = TransformerConfig.release_openwebtext()
    assert (cfg.vocab_size, cfg.outside_embed_dim, cfg.embed_bias, cfg.embed_dropout) == (50257, None, False, True)
    assert (cfg.dropout, cfg.attn_dropout) == (0.02, 0.02)
    n = count(cfg)
    print(f"release OpenWebText parameters: {n:,}")
    assert n == 165_857_344 == release_count(50257, None)


def test_release_presets_tie_attention_dropout_to_dropout():
    assert TransformerConfig.release_text8(dropout=0.1).attn_dropout == 0.1
    cfg = TransformerConfig.release_openwebtext(dropout=0.1, attn_dropout=0.0)
    assert (cfg.dropout, cfg.attn_dropout) == (0.1, 0.0)


def test_narrow_conditioning_width_parameter_count():
    """cond_dim = 128 (as in MDLM/SEDD) shrinks every adaLN modulation to 128 -> 6d."""
    assert count(TransformerConfig.release_text8(cond_dim=128)) == release_count(27, 64, c=128)
    # md4's defaults: full-width conditioning from 256 time features, no biases
    v, e, d, n_layers, h = 27, 64, 768, 12, 2048
    block = 3 * d * d + d * d + 3 * d * h + 6 * d * d
    expected = (v + 1) * e + e * d + 256 * d + d * d + n_layers * block + 2 * d * d + d * v
    assert count(TransformerConfig(vocab_size=v, outside_embed_dim=e)) == expected == 129_439_744
    model = Transformer(tiny(cond_dim=8, num_classes=3))
    z, t = inputs()
    assert model(z, t, labels=torch.tensor([0, 1, 2])).shape == (3, 8, V)


def test_mlp_hidden_floors_before_rounding_as_in_the_release():
    # int(8 * 4 / 3) = 10 is already even, whereas rounding 10.67 up would give 12
    assert TransformerConfig(vocab_size=V, dim=4, n_heads=2, mlp_hidden_multiple=2).mlp_hidden == 10


def biases(model: Transformer) -> dict[str, bool]:
    layers = {
        "time_mlp.0": model.time_mlp[0],
        "time_mlp.2": model.time_mlp[2],
        "modulation": model.blocks[0].modulation[1],
        "final_modulation": model.final_modulation[1],
        "embed": model.embed[1],
    }
    return {name: layer.bias is not None for name, layer in layers.items()}


def test_cond_bias_and_embed_bias():
    assert not any(biases(Transformer(tiny(outside_embed_dim=8))).values())
    with_cond = biases(Transformer(tiny(outside_embed_dim=8, cond_bias=True)))
    assert with_cond == {name: name != "embed" for name in with_cond}
    with_embed = biases(Transformer(tiny(outside_embed_dim=8, embed_bias=True)))
    assert with_embed == {name: name == "embed" for name in with_embed}
    model = Transformer(release_tiny())
    attn_mlp = [*model.blocks[0].attn.children(), model.blocks[0].mlp.w1, model.blocks[0].mlp.w2, model.logits]
    assert all(layer.bias is None for layer in attn_mlp if isinstance(layer, torch.nn.Linear))


def test_time_mlp_widths():
    model = Transformer(release_tiny())
    assert [(m.in_features, m.out_features) for m in model.time_mlp[::2]] == [(16, 24), (24, 8)]
    model = Transformer(tiny())  # defaults: 256 features -> dim -> dim
    assert [(m.in_features, m.out_features) for m in model.time_mlp[::2]] == [(256, 32), (32, 32)]


@pytest.mark.parametrize(
    "mlp_type,act,expected",
    [
        ("glu", "mlp", torch.sigmoid),
        ("swiglu", "mlp", torch.nn.functional.silu),
        ("geglu", "mlp", torch.nn.functional.gelu),
        ("glu", "silu", torch.nn.functional.silu),
    ],
)
def test_modulation_activation(mlp_type, act, expected):
    model = randomize(Transformer(tiny(mlp_type=mlp_type, modulation_act=act, cond_bias=True)))
    c = torch.randn(3, 32)
    for modulation in (model.blocks[1].modulation, model.final_modulation):
        linear = modulation[1]
        torch.testing.assert_close(modulation(c), expected(c) @ linear.weight.T + linear.bias)


def test_channel_dropout_masks_whole_channels_in_training_only():
    torch.manual_seed(0)
    drop = ChannelDropout(0.5)
    x = torch.ones(4, 16, 64)
    y = drop(x)
    assert torch.equal(y, y[:, :1].expand_as(y))  # one mask per (example, channel), shared by positions
    assert set(y.unique().tolist()) == {0.0, 2.0}  # kept channels scaled by 1 / (1 - p)
    assert not torch.equal(y[0], y[1])
    assert torch.equal(drop.eval()(x), x)
    blocks = Transformer(release_tiny()).blocks
    assert all(isinstance(block.dropout, ChannelDropout) for block in blocks)
    assert all(isinstance(block.dropout, torch.nn.Dropout) for block in Transformer(tiny(dropout=0.1)).blocks)


def test_channel_dropout_in_the_network_is_active_only_in_training():
    model = randomize(Transformer(release_tiny(dropout=0.3, attn_dropout=0.0)))
    z, t = inputs()
    torch.manual_seed(0)
    a = model.train()(z, t)
    b = model(z, t)
    assert not torch.allclose(a, b)
    model.eval()
    torch.testing.assert_close(model(z, t), model(z, t), rtol=0, atol=0)


def test_attention_dropout_only_in_training():
    attn = randomize(Transformer(tiny(attn_dropout=0.5))).blocks[0].attn
    x = torch.randn(2, 8, 32)
    cos, sin = rope_angles(torch.arange(8), 8)
    torch.manual_seed(0)
    attn.train()
    assert not torch.allclose(attn(x, cos, sin), attn(x, cos, sin))
    reference = attn(x, cos, sin)
    attn.attn_dropout = 0.0
    assert torch.equal(attn(x, cos, sin), attn(x, cos, sin))  # no dropout: deterministic in training too
    attn.attn_dropout = 0.5
    attn.eval()
    attn_off = attn(x, cos, sin)
    torch.testing.assert_close(attn(x, cos, sin), attn_off, rtol=0, atol=0)
    assert not torch.allclose(reference, attn_off)


def test_embed_dropout_switch():
    assert Transformer(tiny(dropout=0.2)).embed_dropout.p == 0.2
    assert Transformer(tiny(dropout=0.2, embed_dropout=False)).embed_dropout.p == 0.0


def test_adaln_zero_identity_start_with_biases():
    """With cond_bias, zero kernels and zero biases still make every block the identity and the logits zero."""
    torch.manual_seed(0)
    model = Transformer(release_tiny(num_classes=3))
    for layer in model.time_mlp[::2]:  # a non-trivial conditioning vector
        torch.nn.init.normal_(layer.bias)
    z, t = inputs()
    labels = torch.tensor([0, 1, 2])
    c = model._condition(t, labels)
    assert torch.count_nonzero(c) > 0
    x = torch.randn(3, 8, 32)
    cos, sin = rope_angles(torch.arange(8), 8)
    for mode in (True, False):
        model.train(mode)
        for block in model.blocks:
            assert torch.equal(block(x, c, cos, sin), x)
        assert torch.count_nonzero(model(z, t, labels)) == 0


def test_release_init_per_layer_std():
    torch.manual_seed(0)
    cfg = TransformerConfig(
        vocab_size=50,
        dim=256,
        n_layers=4,
        n_heads=4,
        outside_embed_dim=32,
        cond_dim=32,
        time_features=32,
        time_hidden=128,
        cond_bias=True,
        embed_bias=True,
        max_positions=64,
        init="release",
    )
    model = Transformer(cfg)
    h, scale = cfg.mlp_hidden, 2 / cfg.n_layers
    assert h == 704  # int(8 * 256 / 3) = 682 -> 704
    block = model.blocks[1]
    expected = {
        "outside embedding": (model.embed[0].weight, 32**-0.5),
        "embedding projection": (model.embed[1].weight, 32**-0.5),
        "positions": (model.position_embed.weight, 256**-0.5),
        "time dense 0": (model.time_mlp[0].weight, 32**-0.5),
        "time dense 1": (model.time_mlp[2].weight, 128**-0.5),
        "qkv": (block.attn.qkv.weight, 256**-0.5),
        "attention out": (block.attn.out.weight, 256**-0.5),
        "w1": (block.mlp.w1.weight, math.sqrt(scale / 256)),
        "w3": (block.mlp.w3.weight, math.sqrt(scale / 256)),
        "w2": (block.mlp.w2.weight, math.sqrt(scale / h)),
    }
    for name, (w, std) in expected.items():
        assert abs(w.std().item() / std - 1) < 0.06, (name, w.std().item(), std)
    for name in ("qkv", "w2", "time dense 0"):  # truncated at two standard deviations of the underlying normal
        w, std = expected[name]
        assert w.abs().max() <= 2 * std / 0.87962566103423978 + 1e-6, name
    assert model.embed[0].weight.abs().max() > 2.5 * 32**-0.5  # embeddings are plain normal, not truncated
    zero = [model.logits.weight, model.embed[1].bias, model.time_mlp[0].bias, model.time_mlp[2].bias]
    zero += [*block.modulation.parameters(), *model.final_modulation.parameters()]
    assert all(torch.count_nonzero(p) == 0 for p in zero)


def test_gpt2_init_is_the_default():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=50, dim=256, n_layers=4, n_heads=4))
    block = model.blocks[1]
    for w, std in [
        (model.embed.weight, 0.02),
        (block.attn.qkv.weight, 0.02),
        (block.mlp.w1.weight, 0.02),
        (block.attn.out.weight, 0.02 / math.sqrt(8)),
        (block.mlp.w2.weight, 0.02 / math.sqrt(8)),
    ]:
        assert abs(w.std().item() / std - 1) < 0.06


def test_release_timestep_embedding_frequencies():
    """sin then cos of 1000 t * 10000^(-i / (half - 1)): frequencies run from 1 down to exactly 1e-4."""
    t = torch.tensor([0.0, 0.001, 0.5])
    emb = timestep_embedding(t, 8)
    freqs = torch.tensor([1.0, 10 ** (-4 / 3), 10 ** (-8 / 3), 1e-4])
    args = 1000 * t[:, None] * freqs
    torch.testing.assert_close(emb, torch.cat((args.sin(), args.cos()), dim=-1))
    torch.testing.assert_close(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    assert emb.dtype == torch.float32 and timestep_embedding(t.double(), 64).shape == (3, 64)


def test_md4_timestep_embedding_layout():
    """md4's own layout: cos then sin of 1000 t * 10000^(-i / half); the release presets use the release's."""
    t = torch.tensor([0.25, 0.75])
    args = 1000 * t[:, None] * torch.tensor([1.0, 1e-1, 1e-2, 1e-3])
    torch.testing.assert_close(timestep_embedding(t, 8, "md4"), torch.cat((args.cos(), args.sin()), dim=-1))
    assert TransformerConfig(vocab_size=V).time_embedding == "md4"
    assert TransformerConfig.release_text8().time_embedding == "release"
    with pytest.raises(ValueError, match="time_embedding"):
        TransformerConfig(vocab_size=V, time_embedding="learned")


def test_axial_positions_break_the_symmetry_of_an_all_mask_image():
    """All-mask image input: without positions every sub-pixel gets the same logits; per-axis tables (H, W and
    C rows, summed) tell them apart."""
    shape = (3, 4, 2)
    z = torch.full((2, *shape), 5)
    t = torch.tensor([1.0, 1.0])
    for axial, expect_equal in ((False, True), (True, False)):
        torch.manual_seed(0)
        model = Transformer(
            TransformerConfig(
                vocab_size=5,
                dim=32,
                n_layers=2,
                n_heads=4,
                time_conditioning="none",
                data_shape=shape,
                axial_positions=axial,
            )
        )
        torch.nn.init.normal_(model.logits.weight, std=0.5)
        out = model(z, t).reshape(2, -1, 5)
        assert torch.allclose(out[:, :1].expand_as(out), out, atol=1e-5) == expect_equal
    assert [table.num_embeddings for table in model.axial_embed] == list(shape)
    rows, cols, chans = (table.weight for table in model.axial_embed)
    torch.testing.assert_close(model._axial_positions()[1 * 8 + 2 * 2 + 1], rows[1] + cols[2] + chans[1])
    with pytest.raises(ValueError, match="data_shape"):
        model(torch.full((2, 4, 3, 2), 5), t)


def test_axial_positions_need_data_shape_and_are_off_by_default():
    with pytest.raises(ValueError, match="axial_positions=True needs data_shape"):
        tiny(axial_positions=True)
    with pytest.raises(ValueError, match="data_shape"):
        tiny(data_shape=(4, 0))
    assert tiny(data_shape=[4, 4]).data_shape == (4, 4)
    model = Transformer(tiny(data_shape=(4, 2)))
    assert model.axial_embed is None
    n = model.num_parameters()
    assert Transformer(tiny(data_shape=(4, 2), axial_positions=True)).num_parameters() == n + (4 + 2) * 32


def test_class_table_has_a_null_label_row():
    model = randomize(Transformer(tiny(num_classes=3)))
    assert model.class_embed.num_embeddings == 4
    z, t = inputs()
    null = torch.full((3,), 3)
    assert not torch.allclose(model(z, t, null), model(z, t, torch.tensor([0, 1, 2])))


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    """Recomputing the blocks in the backward pass replays their dropout masks: identical loss and gradients."""
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=9, dim=32, n_layers=3, n_heads=2, dropout=0.2, attn_dropout=0.1)
    net = Transformer(config).train()
    for block in net.blocks:
        torch.nn.init.normal_(block.modulation[1].weight, std=0.1)
    torch.nn.init.normal_(net.logits.weight, std=0.1)
    z, t = torch.randint(0, 10, (4, 16)), torch.rand(4)
    results = []
    for checkpointing in (False, True):
        net.checkpointing = checkpointing
        net.zero_grad()
        torch.manual_seed(1)
        loss = net(z, t).logsumexp(-1).mean()
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in net.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
