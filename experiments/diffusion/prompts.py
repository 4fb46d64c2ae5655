"""Two prompt languages over one vocabulary, and a whitespace tokenizer.

Both languages name the ten digit classes with their own words and their own
sentence templates; English words and romanised Japanese words share no
token. A third "language", ``symbol``, is the class digit alone ("7"): the
shared base model learns images from it before any language is taught.
Tokenization is a pure lookup, so prompts and token ids are deterministic.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from m2n2_jax.errors import M2N2Error

PAD = "<pad>"
MAX_TOKENS = 4


class PromptError(M2N2Error, ValueError):
    """A prompt or language the tokenizer cannot handle."""


@dataclasses.dataclass(frozen=True)
class Language:
    """Class words (index = digit) and sentence templates with a ``{}`` slot."""

    name: str
    words: tuple[str, ...]
    templates: tuple[str, ...]


SYMBOL = Language("symbol", tuple(str(d) for d in range(10)), ("{}",))
ENGLISH = Language(
    "english",
    ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    ("{}", "digit {}", "the number {}", "a {} please"))
JAPANESE = Language(
    "japanese",
    ("rei", "ichi", "ni", "san", "yon", "go", "roku", "nana", "hachi", "kyuu"),
    ("{}", "suuji no {}", "{} no kazu", "{} o kaite"))
LANGUAGES = {lang.name: lang for lang in (SYMBOL, ENGLISH, JAPANESE)}


def _build_vocab() -> tuple[str, ...]:
    """PAD, then each language's words in order of appearance (symbol, English, Japanese)."""
    vocab = [PAD]
    for lang in (SYMBOL, ENGLISH, JAPANESE):
        for text in [t.format(w) for t in lang.templates for w in lang.words]:
            for token in text.split():
                if token not in vocab:
                    vocab.append(token)
    return tuple(vocab)


VOCAB = _build_vocab()
TOKEN_ID = {token: i for i, token in enumerate(VOCAB)}


def language(name: str) -> Language:
    if name not in LANGUAGES:
        raise PromptError(f"unknown prompt language {name!r}; choose one of: {', '.join(LANGUAGES)}.")
    return LANGUAGES[name]


def tokenize(text: str) -> np.ndarray:
    """Token ids [MAX_TOKENS] (int32, PAD = 0 on the right) of a prompt."""
    tokens = text.split()
    if not tokens or len(tokens) > MAX_TOKENS:
        raise PromptError(f"prompt {text!r} has {len(tokens)} tokens; use 1 to {MAX_TOKENS} words.")
    unknown = [t for t in tokens if t not in TOKEN_ID]
    if unknown:
        raise PromptError(f"prompt {text!r} has words outside the vocabulary: {unknown}; "
                          "add them to a Language in experiments/diffusion/prompts.py.")
    ids = np.zeros((MAX_TOKENS,), np.int32)
    ids[:len(tokens)] = [TOKEN_ID[t] for t in tokens]
    return ids


def prompts(lang: str | Language, templates=None):
    """(texts, token ids [M, MAX_TOKENS], classes [M]) for every template x class.

    templates: indices of the language's templates to use (default all);
    order is template-major, class-minor.
    """
    lang = language(lang) if isinstance(lang, str) else lang
    chosen = range(len(lang.templates)) if templates is None else templates
    texts, classes = [], []
    for t in chosen:
        for digit, word in enumerate(lang.words):
            texts.append(lang.templates[t].format(word))
            classes.append(digit)
    return texts, np.stack([tokenize(t) for t in texts]), np.asarray(classes, np.int32)


def language_token_ids(lang: str | Language) -> np.ndarray:
    """Sorted ids of the tokens a language's prompts use."""
    _, ids, _ = prompts(lang)
    return np.unique(ids[ids != 0])
