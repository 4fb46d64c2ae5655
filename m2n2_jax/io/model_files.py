"""Read and write single models as files, in a task's flat layout.

Formats, chosen by the path:

- ``.npy``: one flat vector [D].
- ``.npz``: either one flat vector (any key), one vector of a stack with
  ``FILE.npz@INDEX`` (e.g. ``best_models.npz@3`` as ``m2n2 evolve`` writes it),
  or one array per parameter, keyed by its pytree path joined with ``/``
  (``params/Dense_0/kernel``, as ``flax.traverse_util.flatten_dict(sep="/")``
  names Flax parameters).
- ``.msgpack``: the parameter pytree as ``flax.serialization.to_bytes`` writes it.
- a Hugging Face directory of the Llama family (``config.json`` and safetensors
  weights) or a ``.gguf`` file, read and written by the reader that :mod:`m2n2_jax.llm`
  registers here with :func:`register_tree_format` when it is imported (this module never
  imports the language models); a merge is written as a Hugging Face directory that keeps the
  first input's config, tokenizer and generation files and its dtype (from a GGUF: rebuilt
  from its metadata), or as a ``.gguf`` file (F32, F16, BF16, Q8_0, Q4_0, Q4_1) carrying the first
  input's GGUF metadata and tokenizer (from a Hugging Face directory: built from config.json and
  tokenizer.json), by the GGUF writer the same package registers.
- any other directory: an orbax checkpoint of the parameter pytree
  (``orbax.checkpoint.StandardCheckpointer``).

Every loader checks the model against the layout and names the first
mismatch (a missing or extra parameter, a wrong shape) in its error. A file
that cannot be read as its format (corrupt, truncated, another format) is a
DataError naming it; any other exception is left as it is (a bug to report, not
a data problem).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import numpy as np

from m2n2_jax.algorithm.flatten import VectorLayout
from m2n2_jax.engine.checkpoint import load_orbax
from m2n2_jax.errors import DataError, SeedModelError

FORMATS = (".npy", ".npz", ".msgpack", ".gguf", "Hugging Face Llama-family directory", "orbax directory")


@dataclasses.dataclass(frozen=True)
class TreeFormat:
    """A model format that another package reads and writes as a parameter pytree."""

    load: Callable[[str], Any]             # path -> parameter pytree (its errors name the path)
    save: Callable[[str, Any, str], None]  # (path, parameter pytree, the input model it is like)
    # GGUF output: (path, parameter pytree, like, tensor type) -> path, and the check made before a merge starts
    save_gguf: Callable[[str, Any, str, str], str] | None = None
    check_gguf: Callable[[str, str], None] | None = None


# "hf-llama" and "gguf" (see format_of), registered by m2n2_jax.llm when it is imported.
_TREE_FORMATS: dict[str, TreeFormat] = {}


def register_tree_format(kind: str, tree_format: TreeFormat) -> None:
    """Read and write models of ``kind`` (a name format_of returns) with ``tree_format``."""
    _TREE_FORMATS[kind] = tree_format


def _tree_format(kind: str, path: str) -> TreeFormat:
    if kind not in _TREE_FORMATS:
        raise DataError(f"{path}: no reader of {kind} models is registered; import m2n2_jax.llm first (m2n2 "
                        "merge does), which registers the Hugging Face and GGUF readers.")
    return _TREE_FORMATS[kind]


def split_index(path: str) -> tuple[str, int | None]:
    """'models.npz@3' -> ('models.npz', 3); other paths -> (path, None)."""
    base, sep, index = path.rpartition("@")
    if sep and base.endswith(".npz") and index.isdigit():
        return base, int(index)
    return path, None


def format_of(path: str) -> str:
    file, _ = split_index(path)
    if os.path.isdir(file):
        return "hf-llama" if os.path.isfile(os.path.join(file, "config.json")) else "orbax"
    ext = os.path.splitext(file)[1].lower()
    if ext in (".npy", ".npz", ".msgpack", ".gguf"):
        return ext[1:]
    raise DataError(f"{path}: unknown model format {ext or '(no extension)'!r}; use one of {', '.join(FORMATS)}.")


def _template(layout: VectorLayout):
    return layout.unravel(np.zeros((layout.size,), layout.dtype))


def _name(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


def _leaf_names(layout: VectorLayout) -> list[str]:
    paths, _ = jax.tree_util.tree_flatten_with_path(_template(layout))
    return [_name(p) for p, _ in paths]


def _flat(vector, layout: VectorLayout, path: str) -> np.ndarray:
    vector = np.asarray(vector)
    if vector.ndim != 1 or vector.shape[0] != layout.size:
        raise SeedModelError(f"{path}: holds an array of shape {vector.shape}, but the task's model is a flat "
                             f"vector of {layout.size:,} parameters; check that --task (and its options) "
                             "describe the architecture the model was trained with.")
    return vector.astype(layout.dtype)


def load_model(path: str, layout: VectorLayout) -> np.ndarray:
    """The model stored at ``path`` as a flat vector [D] in ``layout``."""
    file, index = split_index(path)
    if not os.path.exists(file):
        raise DataError(f"model file {file} does not exist.")
    kind = format_of(path)
    if kind == "npy":
        with _reading(path, kind):
            vector = np.load(file, allow_pickle=False)
        return _flat(vector, layout, path)
    if kind == "npz":
        return _load_npz(file, index, layout, path)
    if kind == "msgpack":
        import msgpack
        from flax import serialization

        with _reading(path, kind, msgpack.UnpackException):
            with open(file, "rb") as f:
                params = serialization.msgpack_restore(f.read())
        return _from_tree(params, layout, path)
    if kind in ("hf-llama", "gguf"):
        return _from_tree(_tree_format(kind, path).load(file), layout, path)  # its errors name the file already
    return _load_orbax(file, layout, path)


class _reading:
    """Turn the exceptions a reader raises on a file it cannot parse into one DataError naming the file."""

    def __init__(self, path: str, kind: str, *extra):
        import zipfile

        self.path, self.kind = path, kind
        self.known = (OSError, EOFError, ValueError, zipfile.BadZipFile) + extra

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if err is not None and isinstance(err, self.known) and not isinstance(err, (DataError, SeedModelError)):
            raise DataError(f"{self.path}: cannot read it as a {self.kind} model ({type(err).__name__}: {err}).") \
                from None
        return False


def _load_npz(file: str, index: int | None, layout: VectorLayout, path: str) -> np.ndarray:
    with _reading(path, "npz"), np.load(file, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    names = _leaf_names(layout)
    if set(names) <= set(arrays):  # one array per parameter
        return _from_tree(layout.treedef.unflatten([arrays[n] for n in names]), layout, path)
    stacks = {k: v for k, v in arrays.items() if v.ndim in (1, 2) and v.shape[-1] == layout.size}
    if len(stacks) != 1:
        raise SeedModelError(f"{path}: expected one flat model ([{layout.size}]) or one array per parameter "
                             f"({names[0]}, ...); found {', '.join(f'{k} {v.shape}' for k, v in arrays.items())}.")
    (key, stack), = stacks.items()
    if stack.ndim == 1:
        if index not in (None, 0):
            raise SeedModelError(f"{path}: {key} holds one model; drop @{index}.")
        return _flat(stack, layout, path)
    if index is None:
        raise SeedModelError(f"{file} holds {stack.shape[0]} models ({key} {stack.shape}); pick one with "
                             f"{file}@INDEX, INDEX from 0 to {stack.shape[0] - 1}.")
    if index >= stack.shape[0]:
        raise SeedModelError(f"{path}: index {index} is out of range; {file} holds {stack.shape[0]} models.")
    return _flat(stack[index], layout, path)


def _from_tree(params, layout: VectorLayout, path: str) -> np.ndarray:
    """Ravel a restored pytree, matching it to the layout by parameter path."""
    have = {_name(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    names = _leaf_names(layout)
    missing, extra = [n for n in names if n not in have], sorted(set(have) - set(names))
    if missing or extra:
        raise SeedModelError(f"{path}: parameters do not match the task's model"
                             + (f"; missing {missing[:3]}" if missing else "")
                             + (f"; unexpected {extra[:3]}" if extra else "")
                             + ". Check that --task (and its options) describe the model's architecture.")
    leaves = []
    for name, shape, dtype in zip(names, layout.shapes, layout.dtypes):
        leaf = have[name]
        if leaf.shape != shape:
            raise SeedModelError(f"{path}: parameter {name} has shape {leaf.shape}, the task's model has {shape}; "
                                 "check --task and its options (e.g. --hidden).")
        leaves.append(leaf.astype(dtype))
    return np.asarray(layout.ravel(layout.treedef.unflatten(leaves)))


def _load_orbax(directory: str, layout: VectorLayout, path: str) -> np.ndarray:
    ocp = load_orbax()
    with _reading(path, "orbax"), ocp.StandardCheckpointer() as checkpointer:
        params = checkpointer.restore(os.path.abspath(directory))
    return _from_tree(params, layout, path)


def save_model(path: str, vector, layout: VectorLayout, like: str | None = None, gguf_type: str = "f32") -> str:
    """Write the flat model ``vector`` to ``path`` in the format its name implies; returns the path.

    A directory path is an orbax checkpoint, or a Hugging Face directory when ``like`` (a model
    it was merged from) is one or a .gguf file: its config, tokenizer files and dtype are kept.
    A ``.gguf`` path is a GGUF file with ``like``'s metadata and tokenizer, its matrices stored as
    ``gguf_type`` (see :mod:`m2n2_jax.llm.gguf_writer`).
    """
    vector = np.asarray(vector)
    if path.lower().endswith(".gguf"):
        return _save_gguf(path, vector, layout, like, gguf_type)
    params = jax.tree.map(np.asarray, layout.unravel(vector))
    if path.endswith(".npy"):
        np.save(path, vector)
    elif path.endswith(".npz"):
        names = _leaf_names(layout)
        np.savez(path, **dict(zip(names, jax.tree.leaves(params))))
    elif path.endswith(".msgpack"):
        from flax import serialization

        with open(path, "wb") as f:
            f.write(serialization.to_bytes(params))
    elif like is not None and format_of(like) in ("hf-llama", "gguf"):
        _tree_format(format_of(like), like).save(path, params, like)
    else:
        ocp = load_orbax()
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(os.path.abspath(path), params, force=True)
    return path


def _save_gguf(path: str, vector, layout: VectorLayout, like: str | None, gguf_type: str) -> str:
    if like is None or format_of(like) not in ("hf-llama", "gguf"):
        raise DataError(f"{path}: a GGUF file is written only for a language model merged from a .gguf file or a "
                        f"Hugging Face Llama-family directory (the first input is {like}); choose another format.")
    params = jax.tree.map(np.asarray, layout.unravel(vector))
    return _tree_format(format_of(like), like).save_gguf(path, params, like, gguf_type)


OUT_FORMATS = ("hf", "gguf")


def check_out_format(like: str, out_format: str | None, gguf_type: str | None) -> None:
    """Refuse, before any work, an output format (and GGUF tensor type) that the merge of ``like`` cannot be
    written in."""
    if gguf_type is not None and out_format != "gguf":
        raise DataError(f"a GGUF tensor type ({gguf_type}) applies to GGUF output only; add --out-format gguf.")
    merged_path("", like, out_format)
    if out_format == "gguf":
        _tree_format(format_of(like), like).check_gguf(like, gguf_type or "f32")


def merged_path(out: str, like: str, out_format: str | None = None) -> str:
    """Where ``m2n2 merge`` writes the merged model: out/merged.EXT in the first input's format, or
    ``out_format``: 'gguf' (out/merged.gguf) or 'hf' (a Hugging Face directory out/merged), both for
    language models only."""
    kind = format_of(like)
    if out_format is not None:
        if out_format not in OUT_FORMATS:
            raise DataError(f"output format {out_format!r} is not supported; use one of {', '.join(OUT_FORMATS)}.")
        if kind not in ("hf-llama", "gguf"):
            raise DataError(f"output format {out_format!r} is for language models (a .gguf file or a Hugging Face "
                            f"directory as the first input), not for {like}; leave out the output format.")
        return os.path.join(out, "merged.gguf" if out_format == "gguf" else "merged")
    return os.path.join(out, "merged" if kind in ("orbax", "hf-llama", "gguf") else f"merged.{kind}")
