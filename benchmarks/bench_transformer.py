"""Forward + backward time of a transformer denoiser, float32 vs bf16 autocast.

Usage: python benchmarks/bench_transformer.py [--model text8|demo] [--compare precision|dropout] [--batch 8]
       [--seq 256] [--threads 2] [--device cpu]
``text8`` is the authors' release's text8 network, ``TransformerConfig.release_text8()``: 12 layers x 768,
12 heads, GLU MLP, adaLN-Zero on a 64-wide conditioning vector, 64-d outside embedding, 88,734,272
parameters, in training mode (Dropout1d residual and attention dropout 0.05). ``demo`` is the
shakespeare-char preset's network (V = 84). ``--compare precision`` times float32 against bf16 autocast;
``--compare dropout`` times the text8 network's dropouts in bf16. Prints a markdown table: median of
--repeats timed runs after --warmup untimed ones, the variants interleaved.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from md4.nn import Transformer, TransformerConfig


def time_step(model: Transformer, z: torch.Tensor, t: torch.Tensor, bf16: bool) -> float:
    """Seconds of one forward + backward pass (float32 loss, as in training)."""
    device = z.device.type
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        logits = model(z, t)
    torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), z.flatten()).backward()
    if device == "cuda":
        torch.cuda.synchronize()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def variants(args) -> dict[str, tuple[Transformer, bool]]:
    """Name -> (model in training mode, bf16?) for the comparison asked for."""
    if args.compare == "dropout":  # the release text8 network's dropouts, bf16
        configs = {
            "residual 0.05 (Dropout1d) + attention 0.05, as the preset": TransformerConfig.release_text8(),
            "residual 0.05 only": TransformerConfig.release_text8(attn_dropout=0.0),
            "none": TransformerConfig.release_text8(dropout=0.0, attn_dropout=0.0),
        }
        return {name: (Transformer(cfg).to(args.device).train(), True) for name, cfg in configs.items()}
    if args.model == "text8":
        cfg = TransformerConfig.release_text8()
    else:
        cfg = TransformerConfig(vocab_size=84, dim=192, n_layers=4, n_heads=3)
    model = Transformer(cfg).to(args.device).train()
    return {"float32": (model, False), "bf16 autocast": (model, True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("text8", "demo"), default="text8")
    parser.add_argument(
        "--compare", choices=("precision", "dropout"), default="precision", help="dropout: text8 network, bf16"
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    runs = variants(args)
    first = next(iter(runs.values()))[0]
    z = torch.randint(0, first.vocab_size, (args.batch, args.seq), device=args.device)
    t = torch.rand(args.batch, device=args.device)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(args.warmup + args.repeats):  # interleaved, so load drifts hit every variant alike
        for name, (model, bf16) in runs.items():
            sec = time_step(model, z, t, bf16)
            if i >= args.warmup:
                times[name].append(sec)
    rows = [(name, statistics.median(secs)) for name, secs in times.items()]

    tokens = args.batch * args.seq
    model_name = "text8" if args.compare == "dropout" else args.model
    print(
        f"{model_name} transformer, {first.num_parameters():,} parameters, "
        f"batch {args.batch} x {args.seq}, device {args.device}, {args.threads} threads\n"
    )
    print(f"| {args.compare} | fwd+bwd median (s) | tokens/s | speed-up |")
    print("|---|---:|---:|---:|")
    for name, sec in rows:
        print(f"| {name} | {sec:.3f} | {tokens / sec:,.0f} | {rows[0][1] / sec:.2f}x |")


if __name__ == "__main__":
    main()
