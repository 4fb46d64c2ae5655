"""Hugging Face tokenizers (tokenizer.json, or rebuilt from a GGUF file) for scoring and generation;
:func:`load_tokenizer` also reads the project's word tokenizer (:mod:`m2n2_jax.llm.word_tokenizer`).

Scoring tokenizes prompt and answer together, as one text, and takes as the answer
every token that covers a character after the prompt (found by character offsets).
With byte-level BPE (Llama 3, SmolLM, Qwen) the space before an answer belongs to
the answer's first token (`` 5``), which is what a model writes after the prompt;
tokenizing the two apart would score ``5`` instead. The prompt tokens before the
first answer token are what greedy generation starts from, so a teacher-forced
exact match (every answer token and the end-of-sequence token is the argmax) is
the same event as greedy generation writing the answer's text and stopping,
whenever the model writes the answer in its canonical tokenization.
"""
from __future__ import annotations

import json
import os

from m2n2_jax.errors import DataError
from m2n2_jax.llm import gguf_file


def join(prompt: str, answer: str, separator: str = " ") -> str:
    """prompt + answer, with ``separator`` between them unless either side already has whitespace there."""
    if not separator or not prompt or not answer or prompt[-1].isspace() or answer[0].isspace():
        return prompt + answer
    return prompt + separator + answer


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` with the special ids that scoring and generation need.

    eos_ids: every id that ends generation (the first is the one scoring appends).
    """

    def __init__(self, tokenizer, bos_id: int | None, eos_ids, pad_id: int, source: str = "",
                 add_bos: bool | None = None, separator: str = " "):
        self._tokenizer = tokenizer
        self.bos_id, self.eos_ids, self.pad_id, self.source = bos_id, tuple(int(e) for e in eos_ids), int(pad_id), source
        self.add_bos, self.separator = add_bos, separator

    @property
    def eos_id(self) -> int:
        return self.eos_ids[0]

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def _encode_with_specials(self, text: str):
        enc = self._tokenizer.encode(text, add_special_tokens=True)
        ids, offsets, special = list(enc.ids), list(enc.offsets), list(enc.special_tokens_mask)
        while ids and special[-1] and len(ids) > 1:  # a post-processor's trailing </s>: scoring appends its own
            ids, offsets, special = ids[:-1], offsets[:-1], special[:-1]
        starts_with_bos = bool(ids) and self.bos_id is not None and ids[0] == self.bos_id
        if self.add_bos and not starts_with_bos and self.bos_id is not None:
            ids, offsets, special = [self.bos_id] + ids, [(0, 0)] + offsets, [1] + special
        elif self.add_bos is False and starts_with_bos and special[0]:
            ids, offsets, special = ids[1:], offsets[1:], special[1:]
        return ids, offsets, special

    def encode_prompt(self, text: str) -> list[int]:
        """Ids of a prompt as transformers' ``tokenizer(text)`` gives them (the tokenizer's own special tokens)."""
        return self._encode_with_specials(text)[0]

    def split(self, prompt: str, answer: str) -> tuple[list[int], list[int]]:
        """(prefix ids, answer ids) of prompt and answer tokenized together (see the module note)."""
        if not answer:
            raise DataError(f"an example has an empty answer (prompt {prompt[:40]!r}); every answer needs text.")
        text = join(prompt, answer, self.separator)
        ids, offsets, special = self._encode_with_specials(text)
        boundary = len(prompt)  # a separator it adds belongs to the answer, as the model writes it
        first = next((i for i, ((_, end), s) in enumerate(zip(offsets, special)) if not s and end > boundary), None)
        if first is None or first == 0:
            raise DataError(f"cannot find the answer's tokens after the prompt {prompt[:40]!r}; "
                            "is the prompt empty?")
        return ids[:first], ids[first:]

    def answer_text(self, prompt: str, answer: str) -> str:
        """The text greedy generation must write for an exact match: the answer as its tokens spell it."""
        prefix, answer_ids = self.split(prompt, answer)
        return self.decode(answer_ids)

    def decode(self, ids) -> str:
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_text(self, ids) -> str:
        return self.decode(ids)


def _json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        try:
            return json.load(f)
        except ValueError as err:
            raise DataError(f"{path} is not JSON ({err}).") from None


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, list) else [value])]


def load_hf_tokenizer(path: str, separator: str = " ") -> HFTokenizer:
    """The tokenizer of a Hugging Face directory (tokenizer.json) or a .gguf file, with its special ids.

    End-of-sequence ids come from generation_config.json (what transformers' generate stops at),
    else config.json; the pad id from config.json, else the first end id.
    """
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise DataError(f"{path}: reading a Hugging Face tokenizer needs the tokenizers package: "
                        "pip install -e '.[llm]' (or pip install tokenizers).") from None
    if path.lower().endswith(".gguf"):
        config, files = gguf_file.hf_files(path)
        tokenizer = gguf_file.build_tokenizer(path)
        generation, tokenizer_config = files["generation_config.json"], files["tokenizer_config.json"]
    else:
        file = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(file):
            raise DataError(f"no tokenizer.json in {path}; the model directory needs its tokenizer.")
        tokenizer = Tokenizer.from_file(file)
        config = _json(os.path.join(path, "config.json"))
        generation = _json(os.path.join(path, "generation_config.json"))
        tokenizer_config = _json(os.path.join(path, "tokenizer_config.json"))
    eos = _ids(generation.get("eos_token_id")) or _ids(config.get("eos_token_id"))
    if not eos:
        raise DataError(f"{path}: neither generation_config.json nor config.json gives eos_token_id; scoring and "
                        "generation need to know where answers end.")
    bos = generation.get("bos_token_id", config.get("bos_token_id"))
    pad = config.get("pad_token_id", generation.get("pad_token_id"))
    pad = _ids(pad)[0] if _ids(pad) else eos[0]
    add_bos = tokenizer_config.get("add_bos_token")
    return HFTokenizer(tokenizer, None if bos is None else int(_ids(bos)[0]), eos, pad, path,
                       add_bos=None if add_bos is None else bool(add_bos), separator=separator)


def load_tokenizer(path: str, separator: str = " "):
    """The project's word tokenizer (tokenizer.json of type m2n2-word) or a Hugging Face tokenizer."""
    file = os.path.join(path, "tokenizer.json")
    if not path.lower().endswith(".gguf"):
        if not os.path.isfile(file):
            raise DataError(f"no tokenizer.json in {path}; the model directory needs its tokenizer.")
        if _json(file).get("type") == "m2n2-word":
            from m2n2_jax.llm.word_tokenizer import WordTokenizer

            return WordTokenizer.load(path)
    return load_hf_tokenizer(path, separator)


def chat_prompt(path: str, message: str) -> str:
    """``message`` as a user turn in the model's chat template (tokenizer_config.json or GGUF metadata),
    ready for the assistant's answer; the message itself when there is no template."""
    if path.lower().endswith(".gguf"):
        tokenizer_config = gguf_file.hf_files(path)[1]["tokenizer_config.json"]
    else:
        tokenizer_config = _json(os.path.join(path, "tokenizer_config.json"))
        template_file = os.path.join(path, "chat_template.jinja")
        if os.path.isfile(template_file):
            with open(template_file) as f:
                tokenizer_config = {**tokenizer_config, "chat_template": f.read()}
    template = tokenizer_config.get("chat_template")
    if not template:
        return message
    try:
        import jinja2
    except ImportError:
        raise DataError(f"{path} has a chat template; rendering it needs jinja2 (pip install jinja2), "
                        "or pass --raw to send the prompt as it is.") from None
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(
        messages=[{"role": "user", "content": message}], add_generation_prompt=True,
        bos_token=tokenizer_config.get("bos_token", ""), eos_token=tokenizer_config.get("eos_token", ""))
