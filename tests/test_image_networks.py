"""CPU tests of the image denoisers, the MD4 release's CIFAR-10 UNet and ImageNet 64x64 UViT (Shi et al. 2024)."""

from __future__ import annotations

import math

import pytest
import torch

from md4.nn import UNet, UNetConfig, UViT, UViTConfig
from md4.nn.image_blocks import lecun_normal_
from md4.nn.uvit import sincos_positions

V = 7
SHAPE = (4, 6, 2)


def unet_cfg(**overrides) -> UNetConfig:
    cfg = {"vocab_size": V, "data_shape": SHAPE, "feature_dim": 16, "n_layers": 2, "groups": 4, "attention_heads": 2}
    cfg.update(overrides)
    return UNetConfig(**cfg)


def uvit_cfg(**overrides) -> UViTConfig:
    cfg = {
        "vocab_size": V,
        "data_shape": SHAPE,
        "feature_dim": 16,
        "n_layers": 1,
        "n_dit_layers": 2,
        "dit_num_heads": 2,
        "dit_hidden_size": 16,
        "groups": 4,
    }
    cfg.update(overrides)
    return UViTConfig(**cfg)


NETS = [(UNet, unet_cfg), (UViT, uvit_cfg)]
IDS = ["unet", "uvit"]


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every weight off its (partly zero) init so that all paths are active."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model


def inputs(b: int = 3, shape: tuple[int, ...] = SHAPE, v: int = V, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, v + 1, (b, *shape), generator=gen), torch.rand(b, generator=gen)


def count(net: type, cfg) -> int:
    with torch.device("meta"):  # count without allocating the weights
        return net(cfg).num_parameters()


@pytest.mark.parametrize("net,make", NETS, ids=IDS)
@pytest.mark.parametrize("shape,v", [((4, 6, 2), 7), ((2, 2, 1), 2), ((8, 4, 3), 256)])
def test_output_shape_and_dtype(net, make, shape, v):
    torch.manual_seed(0)
    model = randomize(net(make(vocab_size=v, data_shape=shape)))
    z, t = inputs(shape=shape, v=v)
    out = model(z, t)
    assert out.shape == (3, *shape, v) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and not model.capabilities.time_independent


@pytest.mark.parametrize("net,make", NETS, ids=IDS)
def test_logits_are_zero_at_init(net, make):
    torch.manual_seed(0)
    model = net(make(num_classes=3))
    z, t = inputs()
    assert torch.count_nonzero(model.condition(t, torch.tensor([0, 1, 3]))) > 0
    assert torch.count_nonzero(model(z, t, torch.tensor([0, 1, 3]))) == 0


@pytest.mark.parametrize("net,make", NETS, ids=IDS)
def test_output_depends_on_t_labels_and_the_null_label_works(net, make):
    model = randomize(net(make(num_classes=3))).eval()
    z, t = inputs()
    y = torch.tensor([0, 1, 2])
    null = torch.full((3,), 3)  # id num_classes: no label
    out = model(z, t, y)
    assert not torch.allclose(out, model(z, 1 - t, y))
    assert not torch.allclose(out, model(z, t, y.flip(0)))
    assert torch.isfinite(model(z, t, null)).all() and not torch.allclose(out, model(z, t, null))
    assert model.condition.class_embed.num_embeddings == 4


@pytest.mark.parametrize("net,make", NETS, ids=IDS)
def test_every_sub_pixel_sees_the_whole_image(net, make):
    model = randomize(net(make())).eval()
    z, t = inputs()
    z2 = z.clone()
    z2[:, -1, -1, -1] = (z[:, -1, -1, -1] + 1) % (V + 1)
    assert not torch.allclose(model(z, t)[:, 0, 0], model(z2, t)[:, 0, 0])


@pytest.mark.parametrize("net,make", NETS, ids=IDS)
def test_gradient_reaches_every_parameter(net, make):
    torch.manual_seed(0)
    model = net(make(num_classes=3, dropout=0.1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    labels = torch.tensor([0, 3, 2])  # the null label's row too
    for step in range(4):
        z, t = inputs(seed=step)
        opt.zero_grad()
        logits = model(z, t, labels)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), z.flatten() % V)
        loss.backward()
        opt.step()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name


@pytest.mark.parametrize("net,make", NETS, ids=IDS)
def test_dropout_only_in_training(net, make):
    model = randomize(net(make(dropout=0.3)))
    z, t = inputs()
    torch.manual_seed(0)
    assert not torch.allclose(model.train()(z, t), model(z, t))
    model.eval()
    torch.testing.assert_close(model(z, t), model(z, t), rtol=0, atol=0)


@pytest.mark.parametrize("net,make", NETS, ids=IDS)
def test_bf16_autocast_close_to_float32(net, make):
    model = randomize(net(make()), seed=1).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    z, t = inputs()
    ref = model(z, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(z, t)
    assert out.dtype == torch.bfloat16
    err = (out.float() - ref).abs().max() / ref.abs().max()
    assert err < 0.05, err


def cond_count(d: int, k: int | None) -> int:
    """The release's CondEmbedding (sin-cos features of width d, with a class embedding of width d)."""
    features = d if k is None else 2 * d
    return features * 4 * d + 4 * d + 4 * d * d + d + (0 if k is None else (k + 1) * d)


def unet_count(v: int, c: int, d: int = 128, n: int = 32, k: int | None = None) -> int:
    """Parameters of the release's UNet: embedding, conditioning, input conv, n + 2 + (n + 1) residual
    blocks (GroupNorms, two 3x3 convs, a bias-free d -> out conditioning projection, a 1x1 skip when the
    width changes), one-head attention with biases, final GroupNorm and 3x3 conv to c * v."""

    def res(i: int, o: int) -> int:
        return 2 * i + 9 * i * o + o + d * o + 2 * o + 9 * o * o + o + (i * o + o if i != o else 0)

    attn = 2 * d + 4 * d * d + 4 * d
    return (
        (v + 1) * d
        + cond_count(d, k)
        + 9 * c * d * d
        + d
        + (n + 2) * res(d, d)
        + attn
        + (n + 1) * res(2 * d, d)
        + 2 * d
        + 9 * d * c * v
        + c * v
    )


def uvit_count(
    v: int, shape: tuple[int, int, int], d: int = 256, n: int = 8, m: int = 20, hidden: int = 768, p: int = 2
) -> int:
    """Parameters of the release's UViT: embedding, conditioning, input conv, n + (n + 1) residual blocks
    with conditional GroupNorms (a biased d -> 2 ch projection each), the DiT (patch conv, learned position
    table, m blocks of biased qkv, bias-free out, 4x MLP, biased adaLN d -> 6 hidden; adaLN final layer and
    projection to p * p * d), a conditional GroupNorm and the 3x3 conv to c * v."""
    h, w, c = shape

    def cgn(ch: int) -> int:
        return d * 2 * ch + 2 * ch

    def res(i: int, o: int) -> int:
        return cgn(i) + 9 * i * o + o + cgn(o) + 9 * o * o + o + (i * o + o if i != o else 0)

    block = 3 * hidden * hidden + 3 * hidden + hidden * hidden + 8 * hidden * hidden + 5 * hidden
    block += d * 6 * hidden + 6 * hidden
    dit = p * p * d * hidden + hidden + (h // p) * (w // p) * hidden + m * block
    dit += d * 2 * hidden + 2 * hidden + hidden * p * p * d + p * p * d
    return (
        (v + 1) * d
        + cond_count(d, None)
        + 9 * c * d * d
        + d
        + n * res(d, d)
        + dit
        + (n + 1) * res(2 * d, d)
        + (cgn(d) + 9 * d * c * v + c * v)
    )


def test_release_cifar10_unet_parameter_count():
    cfg = UNetConfig(vocab_size=256, data_shape=(32, 32, 3))
    assert (cfg.feature_dim, cfg.n_layers, cfg.dropout, cfg.attention_heads, cfg.groups) == (128, 32, 0.1, 1, 32)
    n = count(UNet, cfg)
    print(f"release CIFAR-10 UNet parameters: {n:,}")
    assert n == 28_427_520 == unet_count(256, 3)
    assert count(UNet, unet_cfg()) == unet_count(V, 2, d=16, n=2)
    assert count(UNet, unet_cfg(num_classes=10)) == unet_count(V, 2, d=16, n=2, k=10)


def test_release_imagenet64_uvit_parameter_counts():
    cfg = UViTConfig(vocab_size=256, data_shape=(64, 64, 3))
    assert (cfg.feature_dim, cfg.n_layers, cfg.n_dit_layers, cfg.dit_num_heads) == (256, 8, 20, 12)
    assert (cfg.dit_hidden_size, cfg.dropout, cfg.patch_size, cfg.groups) == (768, 0.1, 2, 32)
    default = count(UViT, cfg)
    best = count(UViT, UViTConfig(vocab_size=256, data_shape=(64, 64, 3), n_layers=24, n_dit_layers=12))
    print(f"release ImageNet64 UViT parameters: {default:,} (8 + 20), {best:,} (24 + 12)")
    assert default == 204_595_712 == uvit_count(256, (64, 64, 3))
    # The paper's 198.3M for its best-likelihood setting, the learned position table (786,432) included.
    assert best == 198_279_680 == uvit_count(256, (64, 64, 3), n=24, m=12)
    assert count(UViT, uvit_cfg()) == uvit_count(V, SHAPE, d=16, n=1, m=2, hidden=16)


def test_flax_default_init():
    torch.manual_seed(0)
    model = UNet(unet_cfg(feature_dim=64, groups=8))
    conv = model.down[0].conv1.weight  # 3x3, 64 -> 64: fan-in 576
    assert abs(conv.std().item() * math.sqrt(576) - 1) < 0.05
    assert conv.abs().max() <= 2 / math.sqrt(576) / 0.87962566103423978 + 1e-6  # truncated at two stds
    assert abs(model.embed.weight.std().item() * 8 - 1) < 0.05  # variance 1 / features
    assert torch.count_nonzero(model.down[0].conv1.bias) == 0
    zero = [model.down[0].cond.weight, model.down[0].conv2.weight, model.output.weight, model.output.bias]
    assert all(torch.count_nonzero(p) == 0 for p in zero)
    w = torch.empty(1000, 40)
    lecun_normal_(w)
    assert abs(w.std().item() * math.sqrt(40) - 1) < 0.02


def test_sincos_positions_follow_the_release():
    """Column in the first half of the channels, row in the second, each sin then cos."""
    pos = sincos_positions(16, 3, 5).view(3, 5, 16)
    assert torch.equal(pos[:, :, :8], pos[:1, :, :8].expand(3, 5, 8))  # first half: column only
    assert torch.equal(pos[:, :, 8:], pos[:, :1, 8:].expand(3, 5, 8))  # second half: row only
    omega = 10000.0 ** -(torch.arange(4) / 4)
    torch.testing.assert_close(pos[0, 2, :8], torch.cat(((2 * omega).sin(), (2 * omega).cos())))
    torch.testing.assert_close(pos[1, 0, 8:], torch.cat((omega.sin(), omega.cos())))
    model = UViT(uvit_cfg())
    torch.testing.assert_close(model.dit.pos_embed.detach(), sincos_positions(16, 2, 3))
    assert model.dit.pos_embed.requires_grad  # learned, as in the release


def test_dit_patchify_then_unpatchify_is_the_identity_with_matching_weights():
    """Token channel (i * p + j) * ch + c holds pixel (i, j) of channel c of its patch, as in the release."""
    model = UViT(uvit_cfg(feature_dim=4, groups=2, dit_hidden_size=16, dit_num_heads=4))
    dit, ch, p = model.dit, 4, 2
    with torch.no_grad():
        dit.patch_embed.weight.zero_()
        dit.patch_embed.bias.zero_()
        for i in range(p):
            for j in range(p):
                for c in range(ch):
                    dit.patch_embed.weight[(i * p + j) * ch + c, c, i, j] = 1.0
        dit.pos_embed.zero_()
        dit.final_linear.weight.copy_(torch.eye(16))
    dit.final_norm = torch.nn.Identity()
    x = torch.randn(2, ch, 4, 6)
    torch.testing.assert_close(dit(x, torch.zeros(2, 4)), x)


@pytest.mark.parametrize(
    "make,overrides,match",
    [
        (unet_cfg, {"feature_dim": 18}, "not divisible by groups"),
        (uvit_cfg, {"feature_dim": 18}, "not divisible by groups"),
        (unet_cfg, {"data_shape": None}, "needs data_shape"),
        (uvit_cfg, {"data_shape": None}, "needs data_shape"),
        (unet_cfg, {"data_shape": (16,)}, "images of shape"),
        (uvit_cfg, {"data_shape": (4, 4)}, "images of shape"),
        (unet_cfg, {"data_shape": (4, 0, 3)}, "images of shape"),
        (uvit_cfg, {"data_shape": (5, 6, 3)}, "not divisible by patch_size"),
        (uvit_cfg, {"data_shape": (4, 6, 3), "patch_size": 4}, "not divisible by patch_size"),
        (unet_cfg, {"attention_heads": 3}, "attention_heads"),
        (unet_cfg, {"feature_dim": 9, "groups": 3}, "even"),
        (uvit_cfg, {"dit_hidden_size": 18, "dit_num_heads": 3}, "multiple of 4"),
        (uvit_cfg, {"dit_num_heads": 3}, "dit_num_heads"),
        (uvit_cfg, {"n_dit_layers": 0}, "n_dit_layers"),
        (unet_cfg, {"n_layers": -1}, "n_layers"),
        (uvit_cfg, {"groups": 0}, "groups must be"),
        (unet_cfg, {"dropout": 1.0}, "dropout"),
        (uvit_cfg, {"vocab_size": 0}, "vocab_size"),
        (unet_cfg, {"num_classes": 0}, "num_classes"),
    ],
)
def test_bad_config_raises(make, overrides, match):
    with pytest.raises(ValueError, match=match):
        make(**overrides)


def test_data_shape_from_a_list_is_a_tuple():
    assert unet_cfg(data_shape=[4, 6, 2]).data_shape == SHAPE == uvit_cfg(data_shape=[4, 6, 2]).data_shape


@pytest.mark.parametrize("net,make", NETS, ids=IDS)
def test_bad_inputs_raise(net, make):
    model = net(make())
    z, t = inputs()
    with pytest.raises(ValueError, match="integer"):
        model(z.float(), t)
    with pytest.raises(ValueError, match="z must have shape"):
        model(z[:, :2], t)
    with pytest.raises(ValueError, match="t must have shape"):
        model(z, t[:2])
    with pytest.raises(ValueError, match="labels"):
        model(z, t, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="labels"):
        net(make(num_classes=3))(z, t)
