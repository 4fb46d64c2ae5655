"""model_files: a file its reader cannot parse is a DataError naming it; a loader's own bug stays itself."""
import numpy as np
import pytest

from m2n2_jax.io import model_files
from m2n2_jax.errors import DataError
from m2n2_jax.algorithm.flatten import VectorLayout


@pytest.fixture
def layout():
    return VectorLayout.of({"w": np.zeros((3,), np.float32)})


@pytest.mark.parametrize("name,content", [("bad.msgpack", b"\x00not msgpack at all"), ("bad.npz", b"PK\x03\x04broken"),
                                          ("bad.npy", b"\x93NUMPY garbage")])
def test_unreadable_files_are_data_errors_naming_the_file(tmp_path, layout, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=f"{name}: cannot read it as a"):
        model_files.load_model(str(tmp_path / name), layout)


def test_a_loader_bug_is_not_reported_as_a_data_problem(tmp_path, layout, monkeypatch):
    """Before, any exception (here a bug in the HF loader) became 'cannot read it as a hf-llama model'."""
    from m2n2_jax.llm import checkpoint

    def broken(path, dtype=None):
        raise KeyError("a bug in the loader")

    monkeypatch.setattr(checkpoint, "load", broken)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(KeyError, match="a bug in the loader"):
        model_files.load_model(str(tmp_path), layout)


def test_language_model_files_need_the_reader_llm_registers(tmp_path, monkeypatch, layout):
    """io never imports the language models: without m2n2_jax.llm's registration a Hugging Face
    directory is refused in one line naming what to import; with it, the registered reader is used."""
    import m2n2_jax.llm  # noqa: F401 (registers its readers)

    assert set(model_files._TREE_FORMATS) == {"hf-llama", "gguf"}
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setattr(model_files, "_TREE_FORMATS", {})
    with pytest.raises(DataError, match="no reader of hf-llama models is registered; import m2n2_jax.llm"):
        model_files.load_model(str(tmp_path), layout)
    model_files.register_tree_format("hf-llama", model_files.TreeFormat(
        load=lambda path: {"w": np.arange(3, dtype=np.float32)}, save=None))
    np.testing.assert_array_equal(model_files.load_model(str(tmp_path), layout), [0, 1, 2])
