"""Two tiny Llama specialists trained from scratch on generated tasks and merged (``python -m experiments.tiny_llm.merge``)."""
