"""SmolLM2-135M-Instruct math and agent specialists merged by M2N2 and the baselines, one command.

    python experiments/smollm2_merge.py --out runs/smollm2-merge             # the CPU budget
    python experiments/smollm2_merge.py --paper-budget --out runs/smollm2-paper   # 1,000 evaluations (a GPU)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's m2n2_jax

from m2n2_jax.llm.smol_pipeline import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
