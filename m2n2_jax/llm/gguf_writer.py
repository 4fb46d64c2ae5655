"""Write a Llama-family model as a GGUF file (llama.cpp's format): the inverse of :mod:`gguf_file`.

Tensors get llama.cpp's names (``blk.N.attn_q.weight``, ``token_embd.weight``, ...);
a Llama's q and k projections are permuted into llama.cpp's rotary order (the rows
of each head's two halves interleaved, per query head for q and per key/value head
for k), as llama.cpp's convert_hf_to_gguf.py does; Qwen2/Qwen3 keep Hugging Face's
order, as there. Weight matrices are stored in the requested type (F32, F16, BF16,
Q8_0, Q4_0, Q4_1, quantized by the ``gguf`` package's bit-exact ports of ggml's
routines); 1-D tensors (norms, biases) stay F32, and a matrix whose rows do not
split into whole quantization blocks falls back to F16, both as llama.cpp does.

Metadata comes from the model the parameters were merged from: a GGUF file's
fields (general.*, the architecture's hyper-parameters, tokenizer.ggml.*, the chat
template) are copied as they are, with ``general.file_type`` rewritten; a Hugging
Face directory's are built from its config.json and tokenizer.json by
:mod:`gguf_metadata`.
"""
from __future__ import annotations

import os

import numpy as np

from m2n2_jax.errors import ConfigError, DataError
from m2n2_jax.llm import checkpoint, gguf_file
from m2n2_jax.llm.checkpoint import iter_hf
from m2n2_jax.llm.config import LlamaConfig
from m2n2_jax.llm.gguf_metadata import config_difference, metadata_from_hf

TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1")
# keys the writer sets itself (or that describe the old file's layout, not the model)
_RECOMPUTED = ("general.architecture", "general.file_type", "general.quantization_version", "general.alignment")


def _gguf():
    try:
        import gguf
    except ImportError:
        raise DataError("writing a GGUF file needs the gguf package: pip install -e '.[llm]' (or pip install gguf).") \
            from None
    return gguf


def check_type(out_type: str) -> str:
    """The tensor type name, lower case; a name the writer does not offer is a ConfigError."""
    name = str(out_type).lower()
    if name not in TYPES:
        raise ConfigError(f"GGUF tensor type {out_type!r} is not supported for writing; use one of {', '.join(TYPES)}.")
    return name


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """Hugging Face's half-split rows of q / k -> llama.cpp's interleaved rows (inverse of gguf_file's unpermute)."""
    half = w.shape[0] // heads // 2
    return w.reshape(heads, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf_name: str) -> str:
    """llama.cpp's name of a Hugging Face tensor name (model.layers.3.mlp.up_proj.weight -> blk.3.ffn_up.weight)."""
    to_gguf = {hf: name for name, hf in gguf_file.GLOBAL_TENSORS.items()}
    if hf_name in to_gguf:
        return to_gguf[hf_name]
    per_layer = {hf: name for name, hf in gguf_file.LAYER_TENSORS.items()}
    parts = hf_name.split(".")
    return f"blk.{parts[2]}.{per_layer['.'.join(parts[3:-1])]}.{parts[-1]}"


def gguf_tensors(config: LlamaConfig, params):
    """(llama.cpp name, float32 array in [out, in] order) of Flax params, one at a time, q/k permuted for a Llama."""
    for hf_name, value in iter_hf(config, params):
        name = gguf_name(hf_name)
        value = np.asarray(value, np.float32)
        if config.model_type == "llama" and name.endswith(("attn_q.weight", "attn_q.bias")):
            value = permute(value, config.num_attention_heads)
        elif config.model_type == "llama" and name.endswith(("attn_k.weight", "attn_k.bias")):
            value = permute(value, config.num_key_value_heads)
        yield name, value


def tensor_type(shape: tuple[int, ...], out_type: str):
    """The GGMLQuantizationType a tensor of ``shape`` is stored in: F32 if 1-D, F16 where blocks do not fit."""
    gguf = _gguf()
    kind = getattr(gguf.GGMLQuantizationType, check_type(out_type).upper())
    if len(shape) < 2:
        return gguf.GGMLQuantizationType.F32
    if shape[-1] % gguf.GGML_QUANT_SIZES[kind][0]:
        return gguf.GGMLQuantizationType.F16
    return kind


def encode(value: np.ndarray, kind) -> np.ndarray:
    """The bytes (as an array) of the tensor stored as ``kind``."""
    gguf = _gguf()
    if kind == gguf.GGMLQuantizationType.F16:
        return np.ascontiguousarray(value.astype(np.float16))
    return gguf.quants.quantize(np.ascontiguousarray(value, np.float32), kind)


def _add_tensor_info(writer, name: str, shape: tuple[int, ...], kind) -> None:
    """Announce a tensor (name, shape, type, size) before its data, so tensors can be written one at a time."""
    gguf = _gguf()
    if kind in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        dtype = np.dtype(np.float32 if kind == gguf.GGMLQuantizationType.F32 else np.float16)
        writer.add_tensor_info(name, shape, dtype, int(np.prod(shape)) * dtype.itemsize)
    else:
        nbytes = int(np.prod(gguf.quants.quant_shape_to_byte_shape(shape, kind)))
        writer.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=kind)


def file_type(out_type: str) -> int:
    """llama.cpp's general.file_type for a file whose matrices are ``out_type``."""
    gguf = _gguf()
    name = check_type(out_type)
    return int(gguf.LlamaFileType.ALL_F32 if name == "f32" else getattr(gguf.LlamaFileType, f"MOSTLY_{name.upper()}"))


def _field_value(field, gguf):
    """(value, type, sub-type) of a reader field, strings kept as their raw bytes."""
    kind = field.types[0]
    if kind == gguf.GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]), kind, None
    if kind != gguf.GGUFValueType.ARRAY:
        return field.contents(), kind, None
    sub = field.types[1]
    if sub == gguf.GGUFValueType.ARRAY:
        raise DataError(f"metadata field {field.name} is an array of arrays, which this writer does not copy.")
    if sub == gguf.GGUFValueType.STRING:
        return [bytes(field.parts[i]) for i in field.data], kind, sub
    return field.contents(), kind, sub


def metadata_from_gguf(like: str, config: LlamaConfig) -> tuple[str, list[tuple]]:
    """(architecture, [(key, value, type, sub-type)]) of every field of the GGUF file ``like`` to copy.

    The parameters must have the shape ``like`` describes: its hyper-parameters are copied as they are.
    """
    gguf = _gguf()
    mismatch = config_difference(gguf_file.config_of(like), config)
    if mismatch:
        raise DataError(f"{like}: its metadata does not describe the model being written ({mismatch}); "
                        "pass the GGUF file these parameters came from.")
    fields = []
    for key, field in gguf_file.fields(like).items():
        if key.startswith("GGUF.") or key in _RECOMPUTED:
            continue
        fields.append((key, *_field_value(field, gguf)))
    return gguf_file.metadata(like)["general.architecture"], fields


def metadata_for(like: str, config: LlamaConfig) -> tuple[str, list[tuple]]:
    """(architecture, metadata fields) of a GGUF file for ``config`` merged from ``like`` (.gguf or HF directory);
    raises a one-line DataError where ``like`` cannot be written as GGUF (cheap: no tensors are touched)."""
    if like.lower().endswith(".gguf"):
        return metadata_from_gguf(like, config)
    return metadata_from_hf(like, config)


def _check_described(fields: list[tuple], arch: str, names, config: LlamaConfig) -> None:
    """The metadata and tensor names being written must describe ``config`` to the GGUF reader (floats as
    the float32 GGUF stores), so that what is written reads back as the same model."""
    meta = {key: value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value
            for key, value, _, _ in fields}
    meta.update({"general.architecture": arch, "_tensor_names": tuple(names)})
    mismatch = config_difference(LlamaConfig.from_hf(gguf_file.config_from_metadata(meta, "the GGUF metadata")),
                                 config)
    if mismatch:
        raise DataError(f"this model cannot be stored as GGUF faithfully (its metadata reads back differently: "
                        f"{mismatch}); write a Hugging Face directory instead.")


def save_gguf(path: str, config: LlamaConfig, params, like: str, out_type: str = "f32") -> str:
    """Write ``params`` as the GGUF file ``path`` with ``like``'s metadata and tokenizer; returns the path.

    ``like``: the .gguf file or Hugging Face directory the parameters were merged from.
    ``out_type``: the type of weight matrices, one of :data:`TYPES` (F32 keeps the float32 values exactly).
    The file is written next to ``path`` and renamed into place, so a failed write leaves no partial file.
    """
    gguf = _gguf()
    out_type = check_type(out_type)
    arch, fields = metadata_for(like, config)
    plan = [(gguf_name(n), checkpoint.expected_shape(config, n)) for n in checkpoint.hf_names(config)]
    _check_described(fields, arch, [name for name, _ in plan], config)
    kinds = {name: tensor_type(shape, out_type) for name, shape in plan}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = path + ".part"
    writer = gguf.GGUFWriter(partial, arch)
    try:
        for key, value, kind, sub in fields:
            if kind == gguf.GGUFValueType.ARRAY and len(value) == 0:
                continue  # GGUF cannot store an empty array; readers treat a missing key the same way
            writer.add_key_value(key, value, kind, sub)
        writer.add_file_type(file_type(out_type))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for name, shape in plan:
            _add_tensor_info(writer, name, shape, kinds[name])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        shapes = dict(plan)
        for name, value in gguf_tensors(config, params):  # one tensor in memory at a time
            if value.shape != shapes[name]:
                raise DataError(f"tensor {name} has shape {value.shape}, but the config implies {shapes[name]}.")
            writer.write_tensor_data(encode(value, kinds[name]))
        writer.close()
        os.replace(partial, path)
    except BaseException:
        writer.close()
        if os.path.exists(partial):
            os.remove(partial)
        raise
    return path


def save_like(path: str, params, like: str, out_type: str = "f32") -> str:
    """Write ``params`` merged from ``like`` as the GGUF file ``path`` (what io.model_files calls)."""
    return save_gguf(path, checkpoint.load_config(like), params, like=like, out_type=out_type)


def check_output(like: str, out_type: str) -> None:
    """Refuse, before a merge starts, a tensor type or an input that cannot be written as GGUF."""
    check_type(out_type)
    metadata_for(like, checkpoint.load_config(like))
