"""Word-level tokenizers built in memory: BOS handling, a split rule, and test tokenizers that do not litter the temporary folder."""

import tempfile

from lens_digits import testing
from lens_digits.model.tokenizers import SPECIALS, word_tokenizer

VOCAB = list("0123456789+=")  # ids 4.. after the four special tokens: "0" is 4, "+" is 14, "=" is 15


def test_add_bos_puts_the_bos_id_first_unless_special_tokens_are_off():
    assert SPECIALS.index("<s>") == 1
    with_bos = word_tokenizer(VOCAB, add_bos=True)
    assert with_bos("12+3=")["input_ids"] == [1, 5, 6, 14, 7, 15]
    assert with_bos("12+3=", add_special_tokens=False)["input_ids"] == [5, 6, 14, 7, 15]
    assert with_bos.bos_token_id == 1
    plain = word_tokenizer(VOCAB)
    assert plain("12+3=")["input_ids"] == [5, 6, 14, 7, 15]  # no BOS unless asked for


def test_split_rule_gives_chunk_tokens():
    chunks = ["123", "45", "6"]
    tok = word_tokenizer([*VOCAB, *chunks], split=r"\d{1,3}|[^\d]")
    ids = tok("12345+6=", add_special_tokens=False)["input_ids"]
    assert [tok.decode([i]) for i in ids] == ["123", "45", "+", "6", "="]
    assert ids == [16, 17, 14, 10, 15]  # the chunks are whole vocabulary entries, not characters
    assert tok.decode(ids) == "12345+6="
    # without a split rule every character is its own token
    assert word_tokenizer([*VOCAB, *chunks])("12345", add_special_tokens=False)["input_ids"] == [5, 6, 7, 8, 9]


def test_char_tokenizer_uses_one_temporary_folder_per_process(tmp_path, monkeypatch):
    # A private temporary folder, so that other processes' test runs cannot add entries while this one counts;
    # and no folder made yet in this process, so that the one allowed is really made here.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(testing, "_FOLDER", None)
    assert tempfile.gettempdir() == str(tmp_path)

    def ours():
        return {p.name for p in tmp_path.iterdir() if p.name.startswith("lens_digits_tokenizer")}

    before = ours()
    toks = [testing.char_tokenizer() for _ in range(5)]
    new = ours() - before
    assert len(new) <= 1 and all(name.startswith("lens_digits_tokenizers_") for name in new), new
    assert len({tuple(t("12+3=", add_special_tokens=False)["input_ids"]) for t in toks}) == 1
