"""The Llama family's hyper-parameters, read from Hugging Face config.json with transformers' semantics.

Families: ``llama`` (config.json as transformers 4.x wrote it, ``rope_theta`` and
``rope_scaling`` at the top, or as 5.x writes it, both inside ``rope_parameters``),
``mistral`` (sliding-window attention), ``qwen2`` (q/k/v biases) and ``qwen3``
(RMSNorm on each head's queries and keys). A field this model does not implement
(another ``hidden_act``, ``rope_type``, ...) is refused by name, with its value and
the directory, never ignored.
"""
from __future__ import annotations

import dataclasses
import json
import os

from m2n2_jax.errors import ConfigError, DataError

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen3": "Qwen3ForCausalLM"}
# transformers' defaults for fields a config.json may leave out (configuration_<family>.py, transformers 5)
_DEFAULTS = {
    "llama": {"rms_norm_eps": 1e-6, "max_position_embeddings": 2048},
    "mistral": {"rms_norm_eps": 1e-6, "max_position_embeddings": 4096 * 32, "num_key_value_heads": 8,
                "sliding_window": 4096},
    "qwen2": {"rms_norm_eps": 1e-6, "max_position_embeddings": 32768, "num_key_value_heads": 32},
    "qwen3": {"rms_norm_eps": 1e-6, "max_position_embeddings": 32768, "num_key_value_heads": 32, "head_dim": 128},
}
ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Shape of a Llama-family model (field names as in Hugging Face's config.json).

    ``rope_scaling`` is a sorted tuple of (key, value) pairs (hashable: the config is a
    static argument of jitted functions), e.g. (("factor", 8.0), ..., ("rope_type", "llama3")).
    ``attention_bias`` puts biases on q, k, v and o (Llama); ``qkv_bias`` on q, k and v
    only (Qwen2); ``qk_norm`` adds per-head RMSNorm to queries and keys (Qwen3).
    """

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
    model_type: str = "llama"
    attention_bias: bool = False
    qkv_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    rope_scaling: tuple = ()
    sliding_window: int | None = None

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
        if isinstance(self.rope_scaling, dict):
            object.__setattr__(self, "rope_scaling", tuple(sorted(self.rope_scaling.items())))

    @property
    def rope(self) -> dict:
        """The rope scaling parameters as a dict ({} for plain rotary embeddings)."""
        return dict(self.rope_scaling)

    def to_hf(self) -> dict:
        """A config.json dictionary for transformers (used when there is no input config.json to keep)."""
        out = {"architectures": [ARCHITECTURES[self.model_type]], "model_type": self.model_type,
               "hidden_act": "silu", "dtype": "float32"}
        out.update({k: v for k, v in dataclasses.asdict(self).items()
                    if k not in ("model_type", "qkv_bias", "qk_norm", "rope_scaling", "sliding_window")})
        if self.model_type == "mistral":
            out["sliding_window"] = self.sliding_window
        if self.model_type not in ("llama",):
            out.pop("mlp_bias")
        if self.model_type not in ("llama", "qwen3"):
            out.pop("attention_bias")
        rope = {"rope_type": "default", **self.rope, "rope_theta": self.rope_theta}
        out["rope_parameters"] = rope
        out.pop("rope_theta")
        return out

    @classmethod
    def from_hf(cls, data: dict, where: str = "config.json") -> "LlamaConfig":
        """Read a config.json dictionary as transformers would, refusing what this model does not implement.

        ``where`` names the file in messages (e.g. 'models/a/config.json').
        """
        family = data.get("model_type", "llama")
        if family not in FAMILIES:
            raise DataError(f"{where}: model_type {family!r} is not supported; supported: {', '.join(FAMILIES)}.")
        missing = [f for f in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads") if f not in data]
        if missing:
            raise DataError(f"{where}: lacks {', '.join(missing)}; is this a {family} checkpoint?")

        def refuse(field, value, supported):
            raise DataError(f"{where}: {field} {value!r} is not supported ({supported}).")

        act = data.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            refuse("hidden_act", act, "only 'silu' is implemented")
        if data.get("pretraining_tp", 1) not in (1, None):
            pass  # transformers 5 ignores it: slicing the matmuls does not change the result
        if data.get("partial_rotary_factor", 1.0) not in (1, 1.0, None):
            refuse("partial_rotary_factor", data["partial_rotary_factor"], "only 1.0 is implemented")
        theta, scaling = _rope(data, where)
        defaults = _DEFAULTS[family]
        kwargs = {f: data[f] for f in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                       "num_attention_heads")}
        kwargs["num_key_value_heads"] = data.get("num_key_value_heads") or defaults.get(
            "num_key_value_heads", data["num_attention_heads"])
        kwargs["head_dim"] = data.get("head_dim") or defaults.get("head_dim")
        kwargs["rms_norm_eps"] = float(data.get("rms_norm_eps", defaults["rms_norm_eps"]))
        kwargs["rope_theta"] = float(theta)
        kwargs["tie_word_embeddings"] = bool(data.get("tie_word_embeddings", False))
        kwargs["max_position_embeddings"] = int(data.get("max_position_embeddings", defaults["max_position_embeddings"]))
        kwargs["model_type"] = family
        kwargs["rope_scaling"] = tuple(sorted(scaling.items()))
        if family == "llama":
            kwargs["attention_bias"] = bool(data.get("attention_bias", False))
            kwargs["mlp_bias"] = bool(data.get("mlp_bias", False))
        elif family == "qwen3":
            kwargs["attention_bias"] = bool(data.get("attention_bias", False))
            kwargs["qk_norm"] = True
        elif family == "qwen2":
            kwargs["qkv_bias"] = True
        if family == "mistral":
            kwargs["sliding_window"] = data.get("sliding_window", defaults["sliding_window"])
        elif family in ("qwen2", "qwen3") and data.get("use_sliding_window"):
            refuse("use_sliding_window", True, f"{family} sliding-window layers are not implemented")
        layer_types = data.get("layer_types")
        if layer_types and any(t != "full_attention" for t in layer_types) and family != "mistral":
            refuse("layer_types", sorted(set(layer_types)), "only 'full_attention' layers are implemented")
        return cls(**kwargs)

    @classmethod
    def load(cls, directory: str) -> "LlamaConfig":
        return cls.from_hf(read_config(directory), os.path.join(directory, "config.json"))

    def save(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump(self.to_hf(), f, indent=2)


def read_config(directory: str) -> dict:
    """The config.json of a Hugging Face model directory, as a dict."""
    path = os.path.join(directory, "config.json")
    if not os.path.exists(path):
        raise DataError(f"no config.json in {directory}; pass a Hugging Face model directory.")
    with open(path) as f:
        try:
            return json.load(f)
        except ValueError as err:
            raise DataError(f"{path} is not JSON ({err}).") from None


def _rope(data: dict, where: str) -> tuple[float, dict]:
    """(rope_theta, scaling parameters) from either config layout, as transformers 5 standardises them."""
    params = dict(data.get("rope_scaling") or data.get("rope_parameters") or {})
    if any(isinstance(v, dict) for v in params.values()):
        raise DataError(f"{where}: rope_parameters per layer type ({', '.join(params)}) are not supported.")
    theta = params.pop("rope_theta", data.get("rope_theta", 10000.0))
    rope_type = params.pop("rope_type", params.pop("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise DataError(f"{where}: rope_type {rope_type!r} is not supported (supported: {', '.join(ROPE_TYPES)}).")
    if params.get("partial_rotary_factor", 1.0) not in (1, 1.0):
        raise DataError(f"{where}: partial_rotary_factor {params['partial_rotary_factor']!r} is not supported "
                        "(only 1.0 is implemented).")
    if rope_type == "default":
        return theta, {}
    keys = {"linear": ("factor",),
            "llama3": ("factor", "low_freq_factor", "high_freq_factor")}[rope_type]
    lacking = [k for k in keys if params.get(k) is None]
    if lacking:
        raise DataError(f"{where}: rope_type {rope_type!r} needs {', '.join(lacking)} in its rope parameters.")
    scaling = {"rope_type": rope_type, **{k: float(params[k]) for k in keys}}
    if rope_type == "llama3":
        scaling["original_max_position_embeddings"] = int(params.get(
            "original_max_position_embeddings", data.get("max_position_embeddings", 2048)))
    return theta, scaling
