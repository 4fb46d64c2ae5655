"""The Llama architecture's hyper-parameters, read from and written to HF config.json."""
from __future__ import annotations

import dataclasses
import json
import os

from ..errors import ConfigError, DataError


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Shape of a Llama model (field names as in Hugging Face's config.json)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int | None = None
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048

    def __post_init__(self):
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ConfigError(
                    f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                    f"{self.num_attention_heads}; set head_dim explicitly.")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads {self.num_attention_heads} must be a multiple of "
                f"num_key_value_heads {self.num_key_value_heads} (grouped-query attention).")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim must be even for rotary embeddings (got {self.head_dim}).")

    def to_hf(self) -> dict:
        """A config.json dictionary that Hugging Face's LlamaForCausalLM accepts."""
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
                "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32",
                **dataclasses.asdict(self)}

    @classmethod
    def from_hf(cls, data: dict) -> "LlamaConfig":
        """Read the fields this model uses from a config.json dictionary."""
        if data.get("model_type", "llama") != "llama":
            raise DataError(f"config.json has model_type {data.get('model_type')!r}; only 'llama' is supported.")
        rope_scaling = data.get("rope_scaling")
        if rope_scaling and rope_scaling.get("rope_type", rope_scaling.get("type")) not in (None, "default"):
            raise DataError(f"rope_scaling {rope_scaling} is not supported; only plain rotary embeddings with rope_theta.")
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = [f for f in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads") if f not in data]
        if missing:
            raise DataError(f"config.json lacks {', '.join(missing)}; is this a Llama checkpoint?")
        kwargs = {k: v for k, v in data.items() if k in fields}
        kwargs.setdefault("num_key_value_heads", data["num_attention_heads"])
        return cls(**kwargs)

    @classmethod
    def load(cls, directory: str) -> "LlamaConfig":
        path = os.path.join(directory, "config.json")
        if not os.path.exists(path):
            raise DataError(f"no config.json in {directory}; pass a Hugging Face model directory.")
        with open(path) as f:
            return cls.from_hf(json.load(f))

    def save(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump(self.to_hf(), f, indent=2)
