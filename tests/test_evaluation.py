from multimodal.evaluation.text import dictionary_word_rate, repeated_4gram_rate, words


def test_words_and_dictionary_rate():
    assert words("Don't PANIC, 42 towels!") == ["don't", "panic", "towels"]
    assert dictionary_word_rate(["the cat sat", "on xqzzt"], {"the", "cat", "sat", "on"}) == 0.8


def test_repeated_4gram_rate_detects_loops():
    loop = "and then the cat and then the cat and then the cat"
    fresh = "a quick brown fox jumps over the lazy dog today"
    assert repeated_4gram_rate([loop]) > 0.5
    assert repeated_4gram_rate([fresh]) == 0.0
