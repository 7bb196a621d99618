"""The known-word share of samples (md4.quality.words): what counts as a word, and the share against hand counts."""

import math

from md4.quality.words import known_word_share, vocabulary, words


def test_words_are_runs_of_letters_with_inner_apostrophes_in_lower_case():
    assert words("O'er the HILL, 'tis thou--and I.") == ["o'er", "the", "hill", "tis", "thou", "and", "i"]
    assert words("ROMEO: x2y") == ["romeo", "x", "y"]
    assert vocabulary("To be, or not to be") == {"to", "be", "or", "not"}


def test_the_share_counts_every_word_occurrence_against_the_known_words():
    known = vocabulary("To be, or not to be: that is the question.")
    assert known_word_share(["To be or nott", "the questoin THAT"], known) == 5 / 7
    assert known_word_share(["Be, be, be."], known) == 1.0 and known_word_share(["zz qq"], known) == 0.0
    assert math.isnan(known_word_share(["...", ""], known))
