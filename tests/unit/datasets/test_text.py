import pytest

from captioner.datasets.text import (
    END, PAD, START, UNK, Vocabulary, build_vocabulary, clean_caption, load_vocabulary,
    save_vocabulary, unwrap, wrap,
)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("A dog's ball.", "a dog ball"),
        ("Two dogs, 3 cats & a man!", "two dogs cats a man"),
        ("I see a cat", "i see a cat"),  # one-letter words are kept
        ("The boy's 2nd  bike\tis RED", "the boy bike is red"),
        ("  ", ""),
        ("mother-in-law's hat", "mother in law hat"),
    ],
)
def test_clean_caption(raw: str, clean: str) -> None:
    assert clean_caption(raw) == clean


def test_clean_caption_truncates() -> None:
    assert clean_caption("a b c d e", max_words=3) == "a b c"


def test_wrap_and_unwrap() -> None:
    assert wrap("a cat") == "startseq a cat endseq"
    assert unwrap("startseq a cat endseq <pad> <pad>".split()) == ["a", "cat"]
    assert unwrap(["a", "b"]) == ["a", "b"]


def test_vocabulary_min_count_and_order() -> None:
    caps = ["startseq a cat endseq", "startseq a dog endseq", "startseq a cat sits endseq"]
    vocab = build_vocabulary(caps, min_count=2)
    assert vocab.tokens == (PAD, UNK, START, END, "a", "cat")
    assert vocab.encode("startseq a dog endseq") == [2, 4, 1, 3]
    assert vocab.decode([2, 4, 5, 3]) == [START, "a", "cat", END]
    assert len(build_vocabulary(caps, 1)) == 4 + 4


def test_vocabulary_json_roundtrip(tmp_path) -> None:
    vocab = build_vocabulary(["startseq a b endseq"], 1)
    save_vocabulary(tmp_path / "v.json", vocab, min_count=1)
    assert load_vocabulary(tmp_path / "v.json") == vocab
    assert not list(tmp_path.glob(".*tmp*")), "no temporary files left behind"


def test_vocabulary_rejects_bad_files(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_vocabulary(bad)
    bad.write_text('{"tokens": ["a", "b"]}')
    with pytest.raises(ValueError, match="bad.json.*must start"):
        load_vocabulary(bad)
    with pytest.raises(ValueError, match="duplicate"):
        Vocabulary((PAD, UNK, START, END, "a", "a"))
