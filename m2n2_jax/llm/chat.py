"""Chat with a Llama-family model (Hugging Face directory or .gguf file): greedy answers, KV cache.

    m2n2 chat SmolLM2-135M-Instruct.Q4_1.gguf --prompt "What is the capital of France?"
    python -m m2n2_jax.llm.chat MODEL --prompt "..."

The prompt is put in the model's chat template (tokenizer_config.json, or the GGUF
metadata) unless --raw is given; the answer is decoded greedily until an
end-of-sequence token, a --stop string, or --max-new-tokens.
"""
from __future__ import annotations

import argparse
import sys

from m2n2_jax.errors import M2N2Error
from m2n2_jax.llm import checkpoint, generate, hf_tokenizer


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("model", help="a Hugging Face model directory or a .gguf file")
    parser.add_argument("--prompt", action="append", required=True,
                        help="the user's message (repeat for several, answered as one batch)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="longest answer in tokens (default 128)")
    parser.add_argument("--stop", action="append", default=[], help="also stop once the answer contains this text")
    parser.add_argument("--raw", action="store_true", help="send the prompt as it is, without the chat template")
    parser.add_argument("--matmul", choices=("auto", "float32", "bfloat16"), default="float32",
                        help="matmul precision: float32 (default), bfloat16 operands with float32 accumulation, or auto "
                             "(bfloat16 where the backend runs it faster: GPU, TPU, CPU with AMX/AVX512-BF16)")
    return parser


def answer(model: str, prompts: list[str], max_new_tokens: int = 128, stop=(), raw: bool = False,
           matmul: str = "float32") -> list[str]:
    """The model's greedy answer to each prompt (special tokens and the end token removed)."""
    tokenizer = hf_tokenizer.load_hf_tokenizer(model)
    config, params = checkpoint.load(model)
    ids = [tokenizer.encode_prompt(p if raw else hf_tokenizer.chat_prompt(model, p)) for p in prompts]
    out = generate.greedy(config, params, ids, max_new_tokens, tokenizer.eos_ids, stop=tuple(stop),
                          decode=tokenizer.decode, matmul=matmul)
    return [tokenizer._tokenizer.decode(o, skip_special_tokens=True) for o in out]


def run(args) -> int:
    for prompt, reply in zip(args.prompt, answer(args.model, args.prompt, args.max_new_tokens, args.stop, args.raw,
                                                  getattr(args, "matmul", "float32"))):
        if len(args.prompt) > 1:
            print(f"> {prompt}")
        print(reply)
    return 0


def main(argv=None) -> int:
    args = add_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0])).parse_args(argv)
    try:
        return run(args)
    except M2N2Error as err:
        print(f"m2n2 chat: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
