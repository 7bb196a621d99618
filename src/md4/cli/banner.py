"""What the commands that train say about the run: the banner before training and the classes of image folders."""

from __future__ import annotations

from md4.data import prepared_of


def describe(trainer, resume: bool, note: str = "") -> str:
    """The banner: what is trained on which data, into where (and ``note``, when there is one)."""
    model = trainer.config.model
    params = sum(p.numel() for p in trainer.model.parameters())
    start = f"resuming at step {trainer.step}" if resume else "training"
    article = "an" if model["kind"] == "ar" else "a"  # "an ar model"; the other kinds read as before
    classes = class_counts(trainer.data)
    precision = trainer.t.precision + (" (train.precision=auto)" if trainer.config.train.precision == "auto" else "")
    tokenizer = trainer.config.data.tokenizer
    data = trainer.config.data.name + (f" in {tokenizer} tokens" if tokenizer else "")
    return (
        f"md4: {start} {article} {model['kind']} model ({model['net']}, {params:,} parameters) on {data}"
        f"{f' ({classes})' if classes else ''} in {precision} into {trainer.run_dir}{f'; {note}' if note else ''}"
    )


def class_counts(dataset, shown: int = 10) -> str:
    """The images each class of an image folder got, e.g. ``cat 80, dog 80`` (the first ``shown`` classes)."""
    prepared = prepared_of(dataset)
    counts = prepared.meta.get("class_counts") if prepared is not None else None
    if not counts:
        return ""
    listed = ", ".join(f"{name} {count}" for name, count in list(counts.items())[:shown])
    return listed + (f", ... ({len(counts)} classes)" if len(counts) > shown else "")
