"""Language models for merging: a Flax Llama, HF safetensors and GGUF I/O, data and scoring.

Importing the package registers its model files (Hugging Face Llama-family directories and
.gguf files) with :mod:`m2n2_jax.io.model_files`, which reads and writes them through it.
"""
from m2n2_jax.io.model_files import TreeFormat, register_tree_format
from m2n2_jax.llm import checkpoint as _checkpoint
from m2n2_jax.llm import gguf_writer as _gguf_writer

for _kind in ("hf-llama", "gguf"):
    register_tree_format(_kind, TreeFormat(load=lambda path: _checkpoint.load(path)[1], save=_checkpoint.save_like,
                                           save_gguf=_gguf_writer.save_like, check_gguf=_gguf_writer.check_output))
