"""Tokenised examples (:func:`m2n2_jax.llm.data.encode`) and the project's word tokenizer on disk."""
import pytest

from m2n2_jax.errors import ConfigError
from m2n2_jax.llm import data
from m2n2_jax.llm.word_tokenizer import WordTokenizer


def test_encode_marks_answer_tokens():
    tok = WordTokenizer.build("ann has 3 pens . how many pens now ? goal : buy click 2".split())
    batch = data.encode(tok, [("ann has 3 pens . how many pens now ?", "3"), ("goal : buy", "click 2")], 14)
    assert batch.tokens.shape == (2, 14)
    assert batch.tokens[0, 0] == tok.bos_id and batch.prompt_lengths.tolist() == [11, 4]
    assert tok.decode(batch.tokens[1][batch.targets[1] > 0]) == "click 2"
    assert batch.tokens[1, 6] == tok.eos_id and batch.targets[1].sum() == 3
    with pytest.raises(ConfigError, match="shorter"):
        data.encode(tok, [("a b c", "d")], 3)


def test_tokenizer_round_trip(tmp_path):
    tok = WordTokenizer.build(["click", "3", "page"])
    tok.save(str(tmp_path))
    again = type(tok).load(str(tmp_path))
    assert again == tok
    assert again.decode(again.encode("click 3") + [tok.eos_id, 5]) == "click 3"
