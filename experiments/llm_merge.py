"""Whole LLM merging pipeline on CPU: data, base, specialists, merges, table.

    python experiments/llm_merge.py                          # writes runs/llm-merge
    python experiments/llm_merge.py --out docs/results/llm-merge   # regenerate the committed report
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's m2n2_jax

from m2n2_jax.llm.pipeline import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
