"""The corpora of the zero-shot protocol (SEDD: Lou et al. 2024, Table 1; MDLM: Sahoo et al. 2024, Table 3): where
each one lives on the Hugging Face hub, which split is evaluated, its text column and its detokeniser, and how its
documents are read, from the hub or, offline, from local files in the dataset's own format.

``datasets`` 4 and newer run no dataset loading scripts, and three of these corpora (the Penn Treebank, One Billion
Words, scientific papers) are script-only on the hub under the names the reference code uses. md4 reads the hub's
own parquet conversion of the first two (revision ``refs/convert/parquet``) and the maintained parquet mirrors
``ccdv/arxiv-summarization`` and ``ccdv/pubmed-summarization`` (the same Cohan et al. 2018 articles) of the third;
LAMBADA is OpenAI's test set (the file the reference code downloads) as EleutherAI's parquet copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from md4.data import DataError
from md4.data.hub import no_remote_code
from md4.quality import zero_shot_text as detok

PARQUET_CONVERSION = "refs/convert/parquet"
LOCAL_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}


@dataclass(frozen=True)
class Corpus:
    """One zero-shot corpus: its hub dataset, configuration, revision and evaluated split, its text column, and the
    detokeniser its raw text needs."""

    name: str
    title: str
    path: str
    config: str | None
    split: str
    column: str
    detokenise: detok.Detokeniser
    revision: str | None = None

    @property
    def source(self) -> str:
        """Where the corpus comes from, written the way ``datasets.load_dataset`` is called."""
        config = f", {self.config}" if self.config else ""
        revision = f", revision {self.revision}" if self.revision else ""
        return f"{self.path}{config}{revision} [{self.split}]"


# The splits are those of MDLM's code: validation where the corpus has one, test for One Billion Words, AG News and
# LAMBADA (which have no validation split).
CORPORA: dict[str, Corpus] = {
    corpus.name: corpus
    for corpus in (
        Corpus("lambada", "LAMBADA", "EleutherAI/lambada_openai", "default", "test", "text", detok.lambada),
        Corpus(
            "wikitext2", "WikiText-2", "Salesforce/wikitext", "wikitext-2-raw-v1", "validation", "text", detok.wikitext
        ),
        Corpus(
            "ptb",
            "PTB",
            "ptb-text-only/ptb_text_only",
            "penn_treebank",
            "validation",
            "sentence",
            detok.ptb,
            PARQUET_CONVERSION,
        ),
        Corpus(
            "wikitext103",
            "WikiText-103",
            "Salesforce/wikitext",
            "wikitext-103-raw-v1",
            "validation",
            "text",
            detok.wikitext,
        ),
        Corpus(
            "lm1b",
            "One Billion Words",
            "billion-word-benchmark/lm1b",
            "plain_text",
            "test",
            "text",
            detok.lm1b,
            PARQUET_CONVERSION,
        ),
        Corpus("ag_news", "AG News", "fancyzhx/ag_news", None, "test", "text", detok.unchanged),
        Corpus(
            "pubmed", "PubMed", "ccdv/pubmed-summarization", "section", "validation", "article", detok.scientific_papers
        ),
        Corpus(
            "arxiv", "arXiv", "ccdv/arxiv-summarization", "section", "validation", "article", detok.scientific_papers
        ),
    )
}


def corpora_named(names: str) -> list[Corpus]:
    """The corpora of a comma-separated list of names, in its order."""
    chosen = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in CORPORA]
    if unknown or not chosen:
        raise DataError(
            f"unknown zero-shot corpus {', '.join(map(repr, unknown)) or repr(names)}; "
            f"choose among {', '.join(CORPORA)} (comma-separated)."
        )
    return [CORPORA[name] for name in dict.fromkeys(chosen)]


def local_files(corpus: Corpus, folder: Path) -> list[Path]:
    """The files of ``corpus`` in a local folder: ``FOLDER/NAME/`` holding the split's parquet or JSON-lines files
    (as the hub stores them, e.g. ``validation-00000-of-00001.parquet``), or a single ``FOLDER/NAME.parquet`` or
    ``FOLDER/NAME.jsonl``."""
    inside = folder / corpus.name
    found = sorted(path for path in inside.glob("*") if path.suffix in LOCAL_FORMATS) if inside.is_dir() else []
    found = found or [
        folder / f"{corpus.name}{suffix}" for suffix in LOCAL_FORMATS if (folder / f"{corpus.name}{suffix}").is_file()
    ]
    if not found:
        raise DataError(
            f"no {corpus.title} files in {folder}: put its {corpus.split} split's parquet or jsonl files in "
            f"{inside}/ (from {corpus.source}), or drop --zero-shot-dir to read it from the Hugging Face hub."
        )
    if len({path.suffix for path in found}) > 1 and {LOCAL_FORMATS[path.suffix] for path in found} != {"json"}:
        raise DataError(f"{inside} mixes parquet and JSON files; keep one format per corpus.")
    return found


def read_documents(corpus: Corpus, folder: str | Path | None = None) -> list[str]:
    """The raw documents (rows of the text column) of ``corpus``'s evaluated split, from ``folder`` when given
    (:func:`local_files`), else from the Hugging Face hub; detokenising is left to the caller."""
    try:
        import datasets
    except ImportError as err:
        raise DataError(
            "zero-shot corpora are read with the optional `datasets` package; install it with `pip install md4[eval]`."
        ) from err
    if folder is not None:
        files = local_files(corpus, Path(folder))
        table = datasets.load_dataset(LOCAL_FORMATS[files[0].suffix], data_files=[str(f) for f in files], split="train")
        origin = str(files[0].parent if len(files) > 1 else files[0])
    else:
        try:
            table = datasets.load_dataset(
                corpus.path,
                corpus.config,
                split=corpus.split,
                revision=corpus.revision,
                **no_remote_code(datasets.__version__),
            )
        except (OSError, ValueError) as err:
            raise DataError(
                f"could not read {corpus.title} ({corpus.source}) from the Hugging Face hub ({type(err).__name__}); "
                f"connect to the hub, or save its {corpus.split} split as parquet or jsonl in DIR/{corpus.name}/ "
                "and pass --zero-shot-dir DIR."
            ) from err
        origin = corpus.source
    if corpus.column not in table.column_names:
        raise DataError(
            f"{origin} has no {corpus.column!r} column (it has {', '.join(table.column_names)}); "
            f"{corpus.title} needs the columns of {corpus.source}."
        )
    return [text or "" for text in table[corpus.column]]
