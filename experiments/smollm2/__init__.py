"""SmolLM2-135M-Instruct math and shop-agent specialists, fine-tuned and merged (``python -m experiments.smollm2.merge``)."""
