"""``m2n2 merge --config FILE.yml``: mergekit's YAML schema, run tensor by tensor.

Supported keys (mergekit 0.1.5's meaning): ``merge_method``, ``base_model``,
``models`` (each ``model`` with optional ``parameters``), global
``parameters``, ``dtype`` (the dtype the tensors are read into and the merge
computes in), ``out_dtype`` (the dtype written; default ``dtype``, else the
base's), ``tokenizer_source`` (``base`` or a model directory; the tokenizer
files are copied from it, by default from the base model). A parameter is a
scalar, a list of numbers interpolated over the layers (a gradient: layer i of
L takes position i / (L - 1); tensors outside the layers take the first
value), or a list of ``{filter: NAME, value: V}`` (the first whose NAME is a
substring of the tensor's name, ``*`` or no filter matching all). A model's
own parameters take precedence over the global ones. Any other key is refused
in one line naming it.

The output directory is mergekit's: ``model.safetensors`` (or
``model-0000i-of-0000N.safetensors`` with ``model.safetensors.index.json``
beyond 5 GB), ``config.json`` (the base's, ``torch_dtype`` set), the
tokenizer files, ``mergekit_config.yml`` (the YAML as given) and a
``README.md``. Tensors are read through memory maps and written as they are
merged, so memory stays near the size of the largest tensor times the number
of inputs.

``merge_method: m2n2`` (or any method of ``m2n2 merge --method``, written
``m2n2:NAME``) runs the evolutionary merge instead: its ``parameters`` are
the ``m2n2 merge`` options with underscores (``task``, ``task_args`` as a
mapping, ``forward_passes``, ``runs``, ``seed``, ``archive``, ...), and the
YAML becomes that command line (:func:`m2n2_arguments`).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import zlib
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from m2n2_jax.errors import ConfigError, DataError
from m2n2_jax.methods import tensor_merges as tm

TOP_KEYS = {"merge_method", "base_model", "models", "parameters", "dtype", "out_dtype", "tokenizer_source"}
MODEL_KEYS = {"model", "parameters"}
DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16),
          "float64": np.dtype(np.float64)}
DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16", "float": "float32"}
_ST_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}
MAX_SHARD_BYTES = 5 * 1000 ** 3          # mergekit's default --out-shard-size
TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer.model",
                   "added_tokens.json", "generation_config.json", "chat_template.json")

# name -> (scope, default); scope 'shared' (global only), 'model' (per non-base model), 'input' (per model, base too)
_REQUIRED = object()
_GTA = {"int8_mask": ("shared", False), "lambda": ("shared", 1.0), "weight": ("model", _REQUIRED),
        "density": ("model", 1.0)}
SPECS = {
    "linear": {"weight": ("input", _REQUIRED), "normalize": ("shared", True)},
    "slerp": {"t": ("shared", _REQUIRED)},
    "model_stock": {"filter_wise": ("shared", False)},
    "multislerp": {"weight": ("model", _REQUIRED), "normalize_weights": ("shared", True), "eps": ("shared", 1e-8)},
    "karcher": {"max_iter": ("shared", 10), "tol": ("shared", 1e-5)},
}
_GTA_DEFAULTS = {  # (normalize, rescale) defaults per method, as mergekit registers them
    "task_arithmetic": (False, False), "ties": (True, False), "dare_ties": (False, True), "dare_linear": (False, True),
    "breadcrumbs": (False, False), "breadcrumbs_ties": (False, False), "della": (True, True),
    "della_linear": (False, True)}
for _name, (_normalize, _rescale) in _GTA_DEFAULTS.items():
    SPECS[_name] = dict(_GTA, normalize=("shared", _normalize), rescale=("shared", _rescale))
    if _name.startswith("breadcrumbs"):
        SPECS[_name]["gamma"] = ("model", 0.01)
    if _name.startswith("della"):
        SPECS[_name]["epsilon"] = ("model", 0.15)
NEEDS_BASE = set(_GTA_DEFAULTS) | {"slerp", "model_stock"}


@dataclass(frozen=True)
class MergeConfig:
    """A parsed mergekit YAML: models in the file's order; ``base`` is one of them (or None)."""
    method: str
    base: str | None
    models: tuple[str, ...]
    model_parameters: tuple[dict, ...]
    parameters: dict
    dtype: str | None
    out_dtype: str | None
    tokenizer_source: str | None
    source: str


def _dtype_name(value, key: str) -> str | None:
    if value is None:
        return None
    name = DTYPE_ALIASES.get(str(value), str(value))
    if name not in DTYPES:
        raise ConfigError(f"{key}: {value!r} is not supported; use one of {', '.join(DTYPES)}.")
    return name


def parse(text: str, where: str = "the config") -> MergeConfig:
    """A :class:`MergeConfig` from YAML text; unsupported keys are refused in one line."""
    import yaml

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML ({str(err).splitlines()[0]}).") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with merge_method and models.")
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unsupported key(s) {', '.join(unknown)}; supported: {', '.join(sorted(TOP_KEYS))}.")
    method = raw.get("merge_method")
    if not isinstance(method, str):
        raise ConfigError(f"{where}: merge_method is missing; e.g. merge_method: ties.")
    entries = raw.get("models")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{where}: models must be a list of {{model: PATH, parameters: {{...}}}}.")
    models, params = [], []
    for entry in entries:
        entry = {"model": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or "model" not in entry:
            raise ConfigError(f"{where}: each entry of models needs a 'model' path (got {entry!r}).")
        extra = sorted(set(entry) - MODEL_KEYS)
        if extra:
            raise ConfigError(f"{where}: unsupported key(s) {', '.join(extra)} in the entry of {entry['model']}.")
        models.append(str(entry["model"]))
        params.append(dict(entry.get("parameters") or {}))
    base = raw.get("base_model")
    base = None if base is None else str(base)
    source = raw.get("tokenizer_source")
    if source == "union":
        raise ConfigError(f"{where}: tokenizer_source: union is not supported (it merges vocabularies); "
                          "use base or a model directory.")
    config = MergeConfig(method, base, tuple(models), tuple(params), dict(raw.get("parameters") or {}),
                         _dtype_name(raw.get("dtype"), "dtype"), _dtype_name(raw.get("out_dtype"), "out_dtype"),
                         None if source is None else str(source), text)
    if not is_m2n2(method):
        _check_method(config, where)
    return config


def is_m2n2(method: str) -> bool:
    return method == "m2n2" or method.startswith("m2n2:")


def _check_method(config: MergeConfig, where: str) -> None:
    if config.method not in SPECS:
        raise ConfigError(f"{where}: merge_method {config.method!r} is not supported; use one of "
                          f"{', '.join(sorted(SPECS))} or m2n2.")
    spec = SPECS[config.method]
    for scope_name, given in [("parameters", config.parameters)] + [
            (f"parameters of {m}", p) for m, p in zip(config.models, config.model_parameters)]:
        unknown = sorted(set(given) - set(spec))
        if unknown:
            raise ConfigError(f"{where}: {config.method} has no parameter(s) {', '.join(unknown)} ({scope_name}); "
                              f"it takes {', '.join(sorted(spec))}.")
    if config.method in NEEDS_BASE and config.base is None:
        raise ConfigError(f"{where}: {config.method} needs base_model.")
    inputs = input_models(config)
    non_base = [m for m in inputs if m != config.base]
    if config.method == "slerp" and len(inputs) != 2:
        raise ConfigError(f"{where}: slerp merges exactly two models, the base and one other (got {len(inputs)}).")
    if config.method == "model_stock" and len(non_base) < 2:
        raise ConfigError(f"{where}: model_stock needs at least two models besides the base (got {len(non_base)}).")
    if not non_base and config.method != "linear":
        raise ConfigError(f"{where}: {config.method} needs a model besides the base.")


def input_models(config: MergeConfig) -> list[str]:
    """The merge's inputs: the listed models, plus the base where it is not listed."""
    listed = list(config.models)
    return listed + ([config.base] if config.base is not None and config.base not in listed else [])


# ---------------------------------------------------------------- parameter values
def evaluate(setting, tensor_name: str, t: float):
    """A parameter's value for one tensor: scalar, gradient over layers (position t) or filtered list."""
    if isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, (bool, int, float, str)):
        return setting
    if not isinstance(setting, list):
        raise ConfigError(f"parameter value {setting!r}: use a number, a list of numbers or a list of "
                          "{filter: NAME, value: V}.")
    if not setting:
        return None
    if all(isinstance(v, (bool, int, float, str)) for v in setting):
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in setting):
            return setting[int(t * (len(setting) - 1))]
        scaled = t * (len(setting) - 1)
        i0 = int(scaled)
        i1 = min(len(setting) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * setting[i0] + frac * setting[i1]
    for cond in setting:
        if not isinstance(cond, dict) or "value" not in cond or set(cond) - {"filter", "value"}:
            raise ConfigError(f"parameter entry {cond!r}: expected {{filter: NAME, value: V}}.")
        name = cond.get("filter")
        if name is None or name == "*" or (tensor_name and str(name) in tensor_name):
            return evaluate(cond["value"], tensor_name, t)
    return None


def _resolve(name, scopes, tensor_name, t, default, where):
    for scope in scopes:
        if name in scope:
            value = evaluate(scope[name], tensor_name, t)
            if value is not None:
                return value
    if default is _REQUIRED:
        raise ConfigError(f"parameter {name} is required for {where} ({tensor_name}); mergekit has no default "
                          f"for it (e.g. {name}: 1.0).")
    return default


def tensor_parameters(config: MergeConfig, tensor_name: str, t: float) -> tuple[dict, dict]:
    """(shared, per input model) parameter values for one tensor."""
    spec = SPECS[config.method]
    own = dict(zip(config.models, config.model_parameters))
    shared = {n: _resolve(n, [config.parameters], tensor_name, t, d, "the merge")
              for n, (scope, d) in spec.items() if scope == "shared"}
    per_model = {}
    for model in input_models(config):
        scopes = [own.get(model, {}), config.parameters]
        per_model[model] = {n: _resolve(n, scopes, tensor_name, t, d, model) for n, (scope, d) in spec.items()
                            if scope == "input" or (scope == "model" and model != config.base)}
    return shared, per_model


_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def layer_position(tensor_name: str, num_layers: int) -> float:
    """mergekit's gradient position: layer i of L at i / (L - 1) (1 for a single layer); other tensors 0."""
    match = _LAYER.search(tensor_name)
    if not match:
        return 0.0
    return int(match.group(1)) / (num_layers - 1) if num_layers > 1 else 1.0


# ---------------------------------------------------------------- safetensors, lazily
class Checkpoint:
    """The tensors of a Hugging Face safetensors directory, each read through a memory map on demand."""

    def __init__(self, directory: str):
        self.directory = directory
        index = os.path.join(directory, "model.safetensors.index.json")
        single = os.path.join(directory, "model.safetensors")
        if os.path.exists(single):
            files = [single]
        elif os.path.exists(index):
            with open(index) as f:
                files = [os.path.join(directory, n) for n in sorted(set(json.load(f)["weight_map"].values()))]
        else:
            raise DataError(f"no model.safetensors or model.safetensors.index.json in {directory}; pass a Hugging "
                            "Face model directory with safetensors weights.")
        self.entries = {}
        for path in files:
            with open(path, "rb") as f:
                size = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(size))
            for name, info in header.items():
                if name != "__metadata__":
                    self.entries[name] = (path, 8 + size, info)

    def names(self) -> list[str]:
        return list(self.entries)

    def get(self, name: str) -> np.ndarray:
        path, offset, info = self.entries[name]
        if info["dtype"] not in _ST_DTYPES:
            raise DataError(f"{path}: tensor {name} has dtype {info['dtype']}; only float tensors can be merged.")
        start, end = info["data_offsets"]
        dtype = DTYPES[_ST_DTYPES[info["dtype"]]]
        if end == start:
            return np.zeros(info["shape"], dtype)
        return np.memmap(path, dtype, "r", offset + start, tuple(info["shape"]))

    def dtype(self, name: str) -> str:
        return _ST_DTYPES.get(self.entries[name][2]["dtype"], "float32")

    def config(self) -> dict:
        path = os.path.join(self.directory, "config.json")
        if not os.path.exists(path):
            raise DataError(f"no config.json in {self.directory}; pass a Hugging Face model directory.")
        with open(path) as f:
            return json.load(f)


def _shard_plan(names, shapes, dtype) -> list[list[str]]:
    shards, current, size = [], [], 0
    for name in names:
        nbytes = int(np.prod(shapes[name], dtype=np.int64)) * dtype.itemsize
        if current and size + nbytes > MAX_SHARD_BYTES:
            shards.append(current)
            current, size = [], 0
        current.append(name)
        size += nbytes
    return shards + [current]


def _header(names, shapes, dtype) -> bytes:
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name in names:
        nbytes = int(np.prod(shapes[name], dtype=np.int64)) * dtype.itemsize
        header[name] = {"dtype": _ST_NAMES[dtype.name], "shape": list(shapes[name]), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


# ---------------------------------------------------------------- running a merge
def merge_tensor(config: MergeConfig, name: str, inputs: dict, t: float, work_dtype, seed: int) -> np.ndarray:
    """One output tensor from the input models' tensors ``inputs`` {model: array}."""
    shared, per_model = tensor_parameters(config, name, t)
    rounding = tm.Rounding(work_dtype)
    base = inputs.get(config.base) if config.base is not None else None
    others = [m for m in input_models(config) if m != config.base]
    method = config.method
    if method == "linear":
        models = input_models(config)
        return tm.linear([inputs[m] for m in models], [per_model[m] for m in models], shared, rounding)
    if method == "slerp":
        return tm.slerp(float(shared["t"]), base, inputs[others[0]], rounding)
    if method == "model_stock":
        return tm.model_stock(base, [inputs[m] for m in others], shared, rounding)
    if method == "multislerp":
        return tm.multislerp(base, [inputs[m] for m in others], [per_model[m] for m in others], shared, rounding)
    if method == "karcher":
        return tm.karcher([inputs[m] for m in input_models(config)], shared, rounding)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())]) if method in tm.RANDOM_METHODS else None
    return tm.generalized_task_arithmetic(method, base, [inputs[m] for m in others], shared,
                                          [per_model[m] for m in others], rounding, rng)


def run_merge(config: MergeConfig, out: str, *, seed: int = 0, progress: bool = False) -> list[str]:
    """Merge tensor by tensor into ``out`` (mergekit's layout); returns the files written."""
    models = input_models(config)
    for m in models:
        if not os.path.isdir(m):
            raise DataError(f"model {m} is not a directory; pass Hugging Face model directories (safetensors).")
    ckpts = {m: Checkpoint(m) for m in models}
    donor = ckpts[config.base if config.base is not None else models[0]]
    names = donor.names()
    for m, ck in ckpts.items():
        missing = [n for n in names if n not in ck.entries]
        if missing:
            raise DataError(f"{m} lacks tensor {missing[0]} (and {len(missing) - 1} more) of {donor.directory}; "
                            "merge models of one architecture.")
    hf_config = donor.config()
    num_layers = int(hf_config.get("num_hidden_layers", 1))
    out_name = config.out_dtype or config.dtype or donor.dtype(names[0])
    out_dtype = DTYPES[out_name]
    os.makedirs(out, exist_ok=True)
    shapes = {n: tuple(donor.entries[n][2]["shape"]) for n in names}
    shards = _shard_plan(names, shapes, out_dtype)
    files = ["model.safetensors"] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    iterator = names
    if progress:
        from tqdm import tqdm
        iterator = tqdm(names, desc=f"{config.method} merge", unit="tensor")
    position = {n: (i, j) for i, shard in enumerate(shards) for j, n in enumerate(shard)}
    handles = [open(os.path.join(out, f), "wb") for f in files]
    try:
        for handle, shard in zip(handles, shards):
            handle.write(_header(shard, shapes, out_dtype))
        for name in iterator:
            work = DTYPES[config.dtype] if config.dtype else DTYPES[donor.dtype(name)]
            inputs = {m: ck.get(name) for m, ck in ckpts.items()}
            merged = merge_tensor(config, name, inputs, layer_position(name, num_layers), work, seed)
            handles[position[name][0]].write(np.ascontiguousarray(merged.astype(out_dtype)).tobytes())
    finally:
        for handle in handles:
            handle.close()
    if len(shards) > 1:
        total = sum(int(np.prod(s, dtype=np.int64)) * out_dtype.itemsize for s in shapes.values())
        with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total},
                       "weight_map": {n: files[position[n][0]] for n in names}}, f, indent=2)
        files.append("model.safetensors.index.json")
    return files + _write_side_files(config, out, hf_config, out_name, donor.directory)


def _write_side_files(config: MergeConfig, out: str, hf_config: dict, dtype_name: str, donor: str) -> list[str]:
    hf_config = dict(hf_config, torch_dtype=dtype_name)
    if "dtype" in hf_config:
        hf_config["dtype"] = dtype_name
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2)
    with open(os.path.join(out, "mergekit_config.yml"), "w", encoding="utf-8") as f:
        f.write(config.source)
    source = donor if config.tokenizer_source in (None, "base") else config.tokenizer_source
    copied = [n for n in TOKENIZER_FILES if os.path.exists(os.path.join(source, n))]
    for n in copied:
        shutil.copy(os.path.join(source, n), os.path.join(out, n))
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
        f.write(f"---\nlibrary_name: transformers\ntags:\n- merge\n---\n# merged model\n\nMerged with m2n2-jax "
                f"(`m2n2 merge --config`), method `{config.method}` as mergekit defines it.\n\n"
                f"Models: {', '.join(f'`{m}`' for m in input_models(config))}"
                + (f"; base `{config.base}`" if config.base else "") + ".\n\nConfiguration:\n\n```yaml\n"
                + config.source.rstrip() + "\n```\n")
    return ["config.json", "mergekit_config.yml", *copied, "README.md"]


# ---------------------------------------------------------------- M2N2 from the same kind of file
_M2N2_FLAGS = ("task", "forward_passes", "runs", "seed", "archive", "scoring_dtype", "batch", "archive_size",
               "alpha", "mutation_std", "log_every", "hidden", "matmul_precision", "data_dir", "checkpoint_every")


def m2n2_arguments(config: MergeConfig, out: str | None) -> list[str]:
    """The ``m2n2 merge`` arguments a ``merge_method: m2n2`` YAML stands for."""
    if config.base is not None and config.base not in config.models:
        raise ConfigError("m2n2 merges the listed models; list the base_model under models too (or drop it).")
    if config.dtype or config.out_dtype or config.tokenizer_source or any(config.model_parameters):
        raise ConfigError("merge_method m2n2 takes no dtype, out_dtype, tokenizer_source or per-model parameters; "
                          "put its options under parameters (task, task_args, forward_passes, ...).")
    params = dict(config.parameters)
    unknown = sorted(set(params) - set(_M2N2_FLAGS) - {"task_args"})
    if unknown:
        raise ConfigError(f"merge_method m2n2 has no parameter(s) {', '.join(unknown)}; it takes "
                          f"{', '.join(_M2N2_FLAGS)} and task_args.")
    argv = list(config.models)
    if config.method.startswith("m2n2:"):
        argv += ["--method", config.method.split(":", 1)[1]]
    for key in _M2N2_FLAGS:
        if key in params:
            argv += [f"--{key.replace('_', '-')}", str(params[key])]
    task_args = params.get("task_args") or {}
    if not isinstance(task_args, dict):
        raise ConfigError("task_args must be a mapping, e.g. task_args: {data: fitness.jsonl}.")
    for key, value in task_args.items():
        argv += ["--task-arg", f"{key}={value}"]
    return argv + (["--out", out] if out else [])


def merge_from_config(path: str, out: str | None, *, seed: int = 0) -> list[str] | None:
    """Run a classic merge from a YAML file into ``out``, or return the ``m2n2 merge`` arguments for M2N2."""
    if not os.path.exists(path):
        raise ConfigError(f"--config {path}: no such file.")
    with open(path, encoding="utf-8") as f:
        config = parse(f.read(), where=path)
    if is_m2n2(config.method):
        return m2n2_arguments(config, out)
    if not out:
        raise ConfigError("m2n2 merge --config needs --out DIR for the merged model directory.")
    files = run_merge(config, out, seed=seed, progress=True)
    print(f"m2n2 merge: {config.method} of {len(input_models(config))} models -> {out} ({', '.join(files)})")
    return None
