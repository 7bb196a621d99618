"""Text generation in the library: prompts, infilling templates and decoding, without the CLI."""

import pytest
import torch

from md4 import MD4, Transformer, TransformerConfig, generate, infill_template
from md4.data import CharTokenizer, RawCodec

CODEC = CharTokenizer("abcdefgh ")


def text_model(length=12, shape=None):
    torch.manual_seed(0)
    net = Transformer(TransformerConfig(vocab_size=CODEC.vocab_size, dim=16, n_layers=1, n_heads=2))
    return MD4(net, vocab_size=CODEC.vocab_size, data_shape=shape or (length,)).eval()


def test_unconditional_samples_are_decoded_text():
    out = generate(text_model(), CODEC, 3, steps=4, seed=0)
    assert len(out.texts) == 3 and all(len(t) == 12 and set(t) <= set("abcdefgh ") for t in out.texts)
    assert out.tokens.shape == (3, 12) and out.nfe <= 4
    assert generate(text_model(), CODEC, 3, steps=4, seed=0).texts == out.texts


def test_prompt_is_kept_and_length_follows_the_request():
    with pytest.warns(
        UserWarning, match="requested length is 20 tokens long but the model was trained on sequences of 12"
    ):
        out = generate(text_model(), CODEC, 2, prompt="bad cab", length=20, steps=4, seed=1, precision="bf16")
    assert all(t.startswith("bad cab") and len(t) == 20 for t in out.texts)


def test_infilling_fills_only_the_holes():
    template = "ab__ cd_e"
    assert infill_template(template, "_", CODEC, 9) == [0, 1, 9, 9, 8, 2, 3, 9, 4]
    out = generate(text_model(), CODEC, 4, infill=template, steps=3, seed=2)
    for text in out.texts:
        assert len(text) == len(template) and text[:2] == "ab" and text[4:7] == " cd" and text[8] == "e"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompt": "ab", "infill": "a_"}, "either a prompt or an infill"),
        ({"infill": "abc"}, "no hole character"),
        ({"infill": "a__", "hole": "__"}, "one character"),
        ({"prompt": "xyz"}, "not in this CharTokenizer"),
        ({"prompt": "abcdefghabcdefgh"}, "shorten it"),
    ],
)
def test_bad_requests_are_one_sentence(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(text_model(), CODEC, 1, steps=2, **kwargs)


def test_data_without_text_takes_no_text():
    model = text_model(shape=(2, 3))
    raw = RawCodec(CODEC.vocab_size)
    assert len(generate(model, raw, 2, steps=2, seed=0).texts[0].splitlines()) == 2
    with pytest.raises(ValueError, match="for sequences"):
        generate(model, raw, 1, prompt="ab")
    with pytest.raises(ValueError, match="no text form"):
        generate(text_model(), raw, 1, prompt="ab")
    with pytest.raises(ValueError, match="num must be a positive integer"):
        generate(text_model(), CODEC, 0)


def test_old_module_paths_still_import():
    """md4 0.2's module paths (before core/, runs/, generation/ and training/) give the moved names, and importing
    md4.generate leaves md4.generate(...) generating."""
    import md4.diffusion
    import md4.train
    from md4.checkpoint import list_checkpoints
    from md4.diffusion import MD4 as OldMD4
    from md4.diffusion import BatchShard, bits_per_token
    from md4.generate import complete

    import md4
    from md4.runs.checkpoints import list_checkpoints as new_list_checkpoints
    from md4.training import trainer

    assert OldMD4 is MD4 and md4.train is trainer and list_checkpoints is new_list_checkpoints
    assert BatchShard.__module__ == "md4.core.noise" and bits_per_token(0.0, 1) == 0.0
    assert complete.__module__ == "md4.generation.images"
    out = md4.generate(text_model(), CODEC, 1, steps=2, seed=0)
    assert len(out.texts) == 1
