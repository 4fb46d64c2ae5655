"""Language models for merging: a Flax Llama, HF safetensors I/O, data and scoring."""
