"""data.tokenizer: a byte-level BPE trained on the corpus (bpe:N) and pretrained Hugging Face tokenizers (hf:DIR),
the cache entry of text encoded again, and bits per character in md4 eval (issue 20, item 2)."""

import json
import math
import subprocess
import sys

import pytest
from cli_runs import TINY_TEXT, cli, last_error

from md4.config import ConfigError, build_config, data_spec_guess
from md4.data import DataError, TokenizersCodec, codec_from_dict, prepare
from md4.data.hf_tokenizer import pretrained_codec, text_pieces, train_bpe

tokenizers = pytest.importorskip("tokenizers")

WORDS = ["thou", "art", "the", "king", "queen", "of", "naught", "héllo", "日本", "naïve", "ça", "va", "to", "be"]
CORPUS = " ".join(WORDS[(i * 7 + i // 3) % len(WORDS)] for i in range(3000)) + "\n\n  \t tabs\tand   spaces \n"
AWKWARD = "Unseen: Ωμέγα 🙂, tabs\t\t, runs of    spaces,\n\n\nblank lines, and a trailing space "
BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "[", "]", "mask", "m", "##a", "##s"]


def test_a_trained_bpe_round_trips_any_text_exactly_and_has_n_tokens():
    codec = TokenizersCodec(train_bpe(CORPUS, 300))
    assert codec.vocab_size == 300
    for text in (CORPUS, AWKWARD, ""):
        ids = codec.encode(text)
        assert codec.decode(ids) == text
    assert len(codec.encode(CORPUS)) < len(CORPUS) / 2  # the merges learnt the words
    assert codec.special_ids == frozenset() and codec.mask_token_id is None and codec.unk_id is None


def test_training_the_bpe_twice_gives_the_same_tokenizer():
    assert train_bpe(CORPUS, 280) == train_bpe(CORPUS, 280)


@pytest.mark.slow
def test_another_process_trains_the_same_bpe():
    first = train_bpe(CORPUS, 280)
    script = (
        "import sys; from md4.data.hf_tokenizer import train_bpe; sys.stdout.write(train_bpe(sys.stdin.read(), 280))"
    )
    other = subprocess.run([sys.executable, "-c", script], input=CORPUS, capture_output=True, text=True, check=True)
    assert other.stdout == first


def test_a_small_corpus_gives_fewer_tokens_than_asked():
    assert 256 < TokenizersCodec(train_bpe("abab abab", 1000)).vocab_size < 300


def test_text_encoded_in_pieces_gives_the_tokens_of_the_whole_text(bert_folder):
    text = CORPUS + AWKWARD + " The [MASK] cat,  sat.\n" * 20
    pieces = text_pieces(text, size=37)
    assert len(pieces) > 100 and "".join(pieces) == text
    bpe = train_bpe(CORPUS, 300)
    for tokenizer_json in (bpe, (bert_folder / "tokenizer.json").read_text()):
        tokenizer = tokenizers.Tokenizer.from_str(tokenizer_json)
        whole = tokenizer.encode(text, add_special_tokens=False).ids
        assert [i for piece in pieces for i in tokenizer.encode(piece, add_special_tokens=False).ids] == whole
    whole = tokenizers.Tokenizer.from_str(bpe).encode(text, add_special_tokens=False).ids
    assert TokenizersCodec(bpe).encode(text * 50).tolist() == whole * 50  # the codec's own pieces


def test_the_codec_rebuilds_from_its_dict_through_json():
    codec = TokenizersCodec(train_bpe(CORPUS, 300))
    rebuilt = codec_from_dict(json.loads(json.dumps(codec.to_dict())))
    assert isinstance(rebuilt, TokenizersCodec) and rebuilt.to_dict() == codec.to_dict()
    ids = codec.encode(AWKWARD)
    assert rebuilt.encode(AWKWARD).tolist() == ids.tolist() and rebuilt.decode(ids) == AWKWARD


@pytest.fixture
def bert_folder(tmp_path):
    """A tiny BERT WordPiece tokenizer in a folder as ``save_pretrained`` writes one: tokenizer.json (normaliser,
    pre-tokeniser, model, post-processor adding [CLS]/[SEP], decoder) and tokenizer_config.json."""
    from tokenizers.implementations import BertWordPieceTokenizer

    vocab, folder = tmp_path / "vocab.txt", tmp_path / "bert"
    vocab.write_text("\n".join(BERT_VOCAB) + "\n")
    folder.mkdir()
    BertWordPieceTokenizer(str(vocab)).save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"mask_token": "[MASK]", "unk_token": "[UNK]"}))
    return folder


def test_a_pretrained_tokenizer_never_encodes_its_special_tokens_from_text(bert_folder):
    codec = pretrained_codec(str(bert_folder))
    assert codec.vocab_size == len(BERT_VOCAB)
    assert codec.mask_token_id == BERT_VOCAB.index("[MASK]") and codec.unk_id == BERT_VOCAB.index("[UNK]")
    assert codec.special_ids == {BERT_VOCAB.index(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")}
    ids = codec.encode("The [MASK] cat sat [CLS]").tolist()
    assert not set(ids) & {codec.mask_token_id, BERT_VOCAB.index("[CLS]"), BERT_VOCAB.index("[SEP]")}
    assert ids[:5] == [BERT_VOCAB.index(t) for t in ("the", "[", "mask", "]", "cat")]
    assert codec.decode(ids[:2] + [codec.mask_token_id]) == "the [ [MASK]"  # what the WordPiece decoder gives
    rebuilt = codec_from_dict(codec.to_dict())
    assert rebuilt.mask_token_id == codec.mask_token_id and rebuilt.encode("the cat").tolist() == [5, 6]


def test_a_pretrained_tokenizer_folder_encodes_the_corpus_as_its_own_entry(bert_folder, corpus, monkeypatch):
    monkeypatch.chdir(bert_folder.parent)
    config = build_config(None, ["data.tokenizer=hf:bert"], data=str(corpus))
    assert config.data.tokenizer == f"hf:{bert_folder}"  # a folder by its absolute path, from any directory
    assert data_spec_guess(config).vocab_size == len(BERT_VOCAB)
    prepared = prepare(str(corpus), tokenizer=config.data.tokenizer)
    base = prepare(str(corpus))
    assert prepared.key.startswith(f"{base.key}-hf-") and prepared.meta["base"]["fingerprint"] == base.fingerprint
    assert prepared.tokenizer.mask_token_id == BERT_VOCAB.index("[MASK]")
    assert prepared.meta["split_characters"]["train"] == len(base.splits["train"])
    assert BERT_VOCAB.index("[CLS]") not in set(prepared.splits["train"].tolist())


def tiny_overrides(*extra):
    return ["train.steps=2", "train.precision=fp32", *TINY_TEXT, *extra]


def test_bad_tokenizer_settings_get_one_sentence_each(corpus, tmp_path):
    for spec, words in (("bpe:abc", "not bpe:N"), ("bpe:3", "257..65536"), ("wordpiece", "neither bpe:N")):
        with pytest.raises(ConfigError, match=words) as err:
            build_config(None, [f"data.tokenizer={spec}"], data=str(corpus))
        assert str(err.value).count(".") >= 1 and "\n" not in str(err.value)
    with pytest.raises(DataError, match="no tokenizer folder at /no/such/folder"):
        build_config(None, ["data.tokenizer=hf:/no/such/folder"], data=str(corpus))
    with pytest.raises(ConfigError, match="mnist are images; leave data.tokenizer out"):
        build_config(None, ["data.tokenizer=bpe:512"], data="mnist")


def test_md4_train_refuses_a_bad_tokenizer_in_one_sentence(corpus, tmp_path, capsys):
    code, _, err = cli(capsys, "train", "--data", corpus, "--out", tmp_path / "r", "data.tokenizer=bpe:3")
    assert code == 2 and "choose N in 257..65536" in last_error(err)


def test_a_bpe_run_reports_bits_per_char_from_the_split_s_characters(corpus, tmp_path, capsys):
    run = tmp_path / "bpe"
    code, out, err = cli(
        capsys, "train", "--data", corpus, "--out", run, "--no-progress", *tiny_overrides(), "data.tokenizer=bpe:300"
    )
    assert code == 0 and f"on {corpus} in bpe:300 tokens" in out + err
    prepared = prepare(str(corpus), tokenizer="bpe:300")  # the same entry again, not trained a second time
    source = json.loads((run / "data.json").read_text())["source"]
    assert source["key"] == prepared.key and source["fingerprint"] == prepared.fingerprint
    built = (prepared.key, (tmp_path / "cache" / prepared.key / "meta.json").stat().st_mtime_ns)
    again = prepare(str(corpus), tokenizer="bpe:300")
    assert (again.key, (tmp_path / "cache" / again.key / "meta.json").stat().st_mtime_ns) == built
    assert json.loads((run / "data.json").read_text())["codec"] == prepared.tokenizer.to_dict()

    code, out, _ = cli(capsys, "eval", run, "--json", "--steps", "5", "--no-progress", "--max-batches", "2")
    result = json.loads(out)
    assert code == 0 and result["data"].endswith("(bpe:300) [test split]")
    tokens, characters = len(prepared.splits["test"]), prepared.meta["split_characters"]["test"]
    assert characters == len(prepared.tokenizer.decode(prepared.splits["test"])) and tokens < characters
    for bound in ("continuous", "discrete"):
        estimate = result[bound]
        assert estimate["bits_per_char"] == pytest.approx(estimate["bits_per_token"] * tokens / characters)
        expected_stderr = estimate["bits_per_token_stderr"] * tokens / characters
        assert estimate["bits_per_char_stderr"] == pytest.approx(expected_stderr)
    code, out, _ = cli(capsys, "eval", run, "--steps", "5", "--no-progress", "--max-batches", "1")
    assert code == 0 and "bits/token = " in out and "bits/char" in out and "(bpe:300)" in out
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in log if r["split"] == "valid"][-1]
    assert math.isclose(valid["bits_per_char"], valid["bits_per_token"] / valid["characters_per_token"])


def test_a_character_run_s_bits_per_char_are_its_bits_per_token(corpus, tmp_path, capsys):
    run = tmp_path / "char"
    assert cli(capsys, "train", "--data", corpus, "--out", run, "--no-progress", *tiny_overrides())[0] == 0
    code, out, _ = cli(capsys, "eval", run, "--json", "--steps", "5", "--no-progress", "--max-batches", "2")
    result = json.loads(out)
    assert code == 0 and result["unit"] == "char"
    assert result["continuous"]["bits_per_char"] == result["continuous"]["bits_per_token"]


def test_md4_data_prepare_encodes_a_corpus_with_a_trained_bpe(corpus, capsys):
    code, out, _ = cli(capsys, "data", "prepare", corpus, "--tokenizer", "bpe:300")
    prepared = prepare(str(corpus), tokenizer="bpe:300")
    assert code == 0 and f"(bpe:300): vocabulary {prepared.tokenizer.vocab_size}; tokens: train" in out
    characters = prepare(str(corpus))
    assert prepared.tokenizer.decode(prepared.splits["valid"]) == characters.tokenizer.decode(
        characters.splits["valid"]
    )
