"""The largest sizes md4 accepts from a config, a run directory or a data set, so that a typo or a crafted file
is refused in one sentence instead of allocating gigabytes.

Each is far above anything the paper or the presets use (text8 and OpenWebText: 256 and 1024 tokens per
sequence, GPT-2's 50,257 tokens; ImageNet 64x64: 12,288 sub-pixels and 1,000 classes).
"""

from __future__ import annotations

MAX_EXAMPLE_TOKENS = 1 << 20  # tokens of one example: a sequence, or the H x W x C sub-pixels of an image
MAX_VOCAB_SIZE = 1 << 22  # token ids of a vocabulary
MAX_CLASSES = 1 << 20  # class labels of a class-conditional model
MAX_PICTURE_SIDE = 1 << 14  # pixels along either side of a PNG that md4 writes
MAX_LAYERS = 1000  # blocks of one kind in a network (building even an empty model takes time per block)


def check_layers(name: str, count: int) -> None:
    """Refuse a network option ``name`` that asks for more than :data:`MAX_LAYERS` blocks."""
    if count > MAX_LAYERS:
        raise ValueError(f"{name}={count:,} is more than md4's limit of {MAX_LAYERS:,} blocks; choose fewer.")


def check_example_tokens(tokens: int, what: str, fix: str) -> None:
    """Refuse ``what`` holding more than :data:`MAX_EXAMPLE_TOKENS` tokens per example; ``fix`` says what to do."""
    if tokens > MAX_EXAMPLE_TOKENS:
        raise ValueError(
            f"{what} has {tokens:,} tokens per example, more than md4's limit of {MAX_EXAMPLE_TOKENS:,}; {fix}."
        )
