"""A small transformer learns a tiny synthetic distribution: its NELBO approaches the entropy."""

import math

import torch
from oracle import OracleDenoiser

from md4 import MD4, Transformer, TransformerConfig


def test_small_transformer_nelbo_approaches_the_entropy():
    torch.manual_seed(0)
    data = OracleDenoiser(vocab_size=3, length=4, concentration=0.1, seed=2)
    net = Transformer(
        TransformerConfig(vocab_size=3, dim=64, n_layers=2, n_heads=4, time_conditioning="none", max_positions=4)
    )
    model = MD4(net, vocab_size=3, schedule="linear")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=400, pct_start=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        x = data.configs[torch.multinomial(data.probs, 256, replacement=True, generator=g)]
        loss, _ = model.loss(x, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    net.eval()
    with torch.no_grad():
        x = data.configs[torch.multinomial(data.probs, 20000, replacement=True, generator=g)]
        nelbo = model.nelbo(x, generator=g).double()
    entropy = data.entropy()
    uniform = 4 * math.log(3)
    se = float(nelbo.std() / math.sqrt(len(nelbo)))
    # Starts at D log V (zero-initialised logits); must close >= 85% of the gap to H(p).
    assert float(nelbo.mean()) - entropy < 0.15 * (uniform - entropy) + 4 * se, (float(nelbo.mean()), entropy)
