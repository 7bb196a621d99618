"""How good a diffusion model is a pretrained masked LM, before and after fine-tuning with MD4's objective?

Usage: python benchmarks/pretrained_mlm.py [--out /tmp/mlmruns] [--pretrain-minutes 4] [--steps 300] [--lr 1e-3]

No pretrained checkpoint is reachable offline, so this makes one: a byte-level BPE of ``--vocab`` tokens (with
BERT's special tokens) trained on the shakespeare train split, and a small BERT (``--layers`` x ``--width``)
pre-trained on that split with BERT's MLM objective (Devlin et al. 2019: 15% of the tokens chosen, 80% of those
masked, 10% replaced by a random token, 10% kept) for ``--pretrain-minutes`` in fp32, saved with
``save_pretrained``. Then the md4 CLI, as a user runs it:

1. ``md4 train --data shakespeare model.net=hf-mlm net.path=BERT train.steps=0``: the pretrained weights as a run,
   and ``md4 eval`` of it: the zero-shot bound;
2. the same with ``train.steps=--steps``: the bound after fine-tuning with MD4's objective;
3. the same fine-tuning from the BERT's random initialisation (``net.pretrained=false``): what pre-training gave.

Each bound is the continuous-time NELBO on the whole test split (one draw per sequence, seed 0), in bits per token
and per character with standard errors. Prints a markdown table; reruns reuse what exists under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from md4.data import prepare

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_tokenizer(text: str, vocab: int):
    """A byte-level BPE (lossless, so bits per character are honest) with BERT's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator([text], trainer=trainer)
    names = dict(zip(("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"), SPECIALS, strict=True))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, **names)


def mlm_batch(rows: torch.Tensor, tokenizer, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption of ``rows``: inputs and labels (-100 where no loss)."""
    chosen = torch.rand(rows.shape, generator=generator) < 0.15
    draw = torch.rand(rows.shape, generator=generator)
    inputs = torch.where(chosen & (draw < 0.8), tokenizer.mask_token_id, rows)
    random_ids = torch.randint(len(SPECIALS), len(tokenizer), rows.shape, generator=generator)
    inputs = torch.where(chosen & (draw >= 0.8) & (draw < 0.9), random_ids, inputs)
    return inputs, torch.where(chosen, rows, -100)


def pretrain(folder: Path, args) -> None:
    """Train the tokenizer and pre-train the BERT on the shakespeare train split; save both to ``folder``."""
    from transformers import BertConfig, BertForMaskedLM

    data = prepare("shakespeare")
    tokenizer = train_tokenizer(data.tokenizer.decode(data.splits["train"]), args.vocab)
    ids = torch.tensor(tokenizer(data.tokenizer.decode(data.splits["train"]), add_special_tokens=False).input_ids)
    rows = ids[: len(ids) // args.seq_len * args.seq_len].view(-1, args.seq_len)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.width,
        num_hidden_layers=args.layers,
        num_attention_heads=args.width // 32,
        intermediate_size=4 * args.width,
        max_position_embeddings=args.seq_len,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = BertForMaskedLM(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(0)
    start, step = time.time(), 0
    while time.time() - start < 60 * args.pretrain_minutes:
        batch = rows[torch.randint(len(rows), (32,), generator=generator)]
        inputs, labels = mlm_batch(batch, tokenizer, generator)
        loss = model(input_ids=inputs, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        if step % 200 == 0:
            print(f"pre-training step {step}: MLM loss {loss.item():.3f} nats/token", flush=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "pretraining.json").write_text(json.dumps({"steps": step, "seconds": time.time() - start}))


def md4(*argv) -> str:
    """Run the md4 CLI; its stdout."""
    done = subprocess.run([sys.executable, "-m", "md4", *map(str, argv)], capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return done.stdout


def bound(run: Path, overrides: list[str]) -> dict:
    """Train the run (unless it exists) and return its test-split bound, ``md4 eval --json``."""
    if not (run / "checkpoints").is_dir():
        md4("train", "--data", "shakespeare", "--out", run, "--no-progress", *overrides)
    return json.loads(md4("eval", run, "--json"))["continuous"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/mlmruns"))
    parser.add_argument("--pretrain-minutes", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of the MD4 fine-tuning")
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    folder = args.out / "tiny-bert"
    if not (folder / "pretraining.json").exists():
        pretrain(folder, args)
    common = [
        "model.net=hf-mlm", f"net.path={folder}", f"data.seq_len={args.seq_len}", "train.precision=fp32",
        "train.batch_size=32", f"train.lr={args.lr}", "train.warmup_steps=50", "train.ema_decay=0.99",
        "train.eval_every=100000", "train.sample_every=100000", f"train.checkpoint_every={max(args.steps, 1)}",
    ]  # fmt: skip
    arms = {
        "pretrained BERT, zero-shot": ["train.steps=0"],
        f"pretrained BERT, {args.steps} MD4 steps": [f"train.steps={args.steps}"],
        f"random BERT, {args.steps} MD4 steps": [f"train.steps={args.steps}", "net.pretrained=false"],
    }
    print("| denoiser | test bits/token | test bits/char |\n|---|---|---|")
    for name, extra in arms.items():
        slug = name.replace(" ", "-").replace(",", "")
        b = bound(args.out / slug, [*common, *extra])
        print(
            f"| {name} | {b['bits_per_token']:.3f} ± {b['bits_per_token_stderr']:.3f} "
            f"| {b['bits_per_char']:.3f} ± {b['bits_per_char_stderr']:.3f} |",
            flush=True,
        )
    print(json.loads((folder / "pretraining.json").read_text()))


if __name__ == "__main__":
    main()
