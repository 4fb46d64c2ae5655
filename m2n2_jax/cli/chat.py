"""``m2n2 chat``: greedy answers of a language model (the options and the work are in m2n2_jax.llm.chat)."""
from __future__ import annotations

from m2n2_jax.llm import chat


def add_parser(sub) -> None:
    chat.add_arguments(sub.add_parser("chat", help="greedy answers of a language model (HF directory or .gguf file)"))


def run(args) -> int:
    return chat.run(args)
