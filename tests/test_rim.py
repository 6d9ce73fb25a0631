"""RIM (notebook 06: toolkit.methods.rim, toolkit.studies.rim, toolkit.training.reasoning): attention spans at the
first response token, safety-neuron selection and RAS on hand-made numbers with known answers; span masses, neuron
activations and ablations on the tiny Qwen2/Qwen3 models against independent references built from the plain HF
model; the reasoning fine-tuning path and its cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from toolkit.core import interventions, units
from toolkit.evaluation import causal
from toolkit.methods import rim
from toolkit.organism import probes, tasks
from toolkit.organism.tokenizer import EMPTY_THINK
from toolkit.studies import rim as rim_study
from toolkit.training import reasoning, sft

# ---- spans ------------------------------------------------------------------------------------------------------

PROMPT = ["<|im_start|>", "a", "s", "\n"]


def test_span_masks_think_on_split_cot_delimiters_and_rest():
    toks = PROMPT + ["<think>", "\n", "T", "o", "\n", "x", "\n", "</think>", "\n", "\n", "I"]
    m = rim.span_masks(toks, query=13)  # the second "\n" after </think>: its next token is the answer
    assert np.flatnonzero(m["cot"]).tolist() == [6, 7, 8, 9]  # "To\nx": inner whitespace stays in the CoT
    assert np.flatnonzero(m["think"]).tolist() == [4, 5, 10, 11]  # <think>, "\n", "\n", </think>
    assert np.flatnonzero(m["rest"]).tolist() == [0, 1, 2, 3, 12, 13]
    assert len(m["cot"]) == 14  # keys 0..query only


def test_span_masks_think_off_empty_block_is_all_think_span():
    toks = PROMPT + list("hi") + ["<think>", "\n", "\n", "</think>", "\n", "\n"]
    m = rim.span_masks(toks, query=len(toks) - 1)
    assert not m["cot"].any()
    assert np.flatnonzero(m["think"]).tolist() == [6, 7, 8, 9]
    assert (m["cot"] | m["think"] | m["rest"]).all() and not (m["think"] & m["rest"]).any()


def test_span_masks_use_the_last_block_before_the_query_and_reject_bad_input():
    toks = ["<think>", "a", "</think>", "b", "<think>", "c", "</think>", "d"]
    m = rim.span_masks(toks, query=7)
    assert np.flatnonzero(m["cot"]).tolist() == [5] and np.flatnonzero(m["think"]).tolist() == [4, 6]
    with pytest.raises(ValueError, match="no <think>"):
        rim.span_masks(["a", "b"], query=1)
    with pytest.raises(ValueError, match="not closed"):
        rim.span_masks(["<think>", "a", "b"], query=2)
    with pytest.raises(ValueError, match="outside"):
        rim.span_masks(["<think>"], query=3)


def test_span_masses_known_answer_and_ignores_future_keys():
    toks = ["u", "<think>", "c", "c", "</think>", "q"]
    masks = rim.span_masks(toks, query=5)
    pattern = torch.tensor([[0.1, 0.2, 0.3, 0.1, 0.05, 0.25, 0.0, 0.0],  # two later keys: causal zeros
                            [0.5, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(rim.span_masses(pattern, masks), [[0.4, 0.25, 0.35], [0.5, 0.0, 0.5]])
    with pytest.raises(ValueError, match="covers 3 keys"):
        rim.span_masses(pattern[:, :3], masks)


def test_head_shift_and_ranking():
    refuse = np.zeros((2, 2, 3, 3))
    comply = np.zeros((2, 2, 3, 3))
    refuse[:, 1, 2] = [0.1, 0.7, 0.2]  # moves mass from the CoT to the think span when refusing
    comply[:, 1, 2] = [0.6, 0.2, 0.2]
    refuse[:, 0, 0] = [0.3, 0.3, 0.4]  # moves mass the other way
    comply[:, 0, 0] = [0.1, 0.5, 0.4]
    refuse[0, 0, 1], comply[0, 0, 1] = [0.0, 0.4, 0.6], [0.0, 0.2, 0.8]  # think only, one pair
    shift = rim.head_shift(refuse, comply)
    np.testing.assert_allclose(shift[:, 1, 2], [1.0, 1.0])
    np.testing.assert_allclose(shift[:, 0, 0], [-0.4, -0.4])
    np.testing.assert_allclose(shift[:, 0, 1], [0.2, 0.0])
    assert rim.top_heads(shift, 2) == [(1, 2), (0, 1)]
    with pytest.raises(ValueError, match="k must be in 1..6"):
        rim.top_heads(shift, 7)
    with pytest.raises(ValueError, match="matched"):
        rim.head_shift(refuse, comply[:1])


# ---- neurons, RAS, KL -------------------------------------------------------------------------------------------

def test_safety_neurons_are_those_top_in_every_disjoint_set():
    rng = np.random.default_rng(0)
    n, n_layers, d_mlp = 12, 3, 10
    unmarked = rng.normal(size=(n, n_layers, d_mlp))
    marked = unmarked + rng.uniform(-0.1, 0.1, size=(n, n_layers, d_mlp))
    marked[:, 1, 5] += 3.0  # large in every set
    marked[:, 0, 2] += 2.0  # large in every set
    marked[:4, 2, 7] += 10.0  # huge, but only in the first set of pairs (0..3)
    marked[4:8, 0, 9] += 5.0  # only in the second set
    marked[:, 2, 3] -= 4.0  # lower on marked prompts: not a candidate (signed ranking)
    sel = rim.select_safety_neurons(torch.tensor(marked), torch.tensor(unmarked), top_m=3, n_sets=3)
    assert sel.per_set[0] == [(2, 7), (1, 5), (0, 2)]
    assert sel.per_set[1] == [(0, 9), (1, 5), (0, 2)]
    assert set(sel.per_set[2][:2]) == {(1, 5), (0, 2)}
    assert sel.neurons == [(1, 5), (0, 2)]  # the intersection, largest mean difference first
    np.testing.assert_allclose(sel.difference, (marked - unmarked).mean(0))
    assert rim.select_safety_neurons(marked, unmarked, top_m=2, n_sets=1).neurons == [(2, 7), (1, 5)]
    with pytest.raises(ValueError, match="n_sets must be in 1..12"):
        rim.select_safety_neurons(marked, unmarked, 3, 13)
    with pytest.raises(ValueError, match="top_m"):
        rim.select_safety_neurons(marked, unmarked, 0, 2)
    with pytest.raises(ValueError, match="matched"):
        rim.select_safety_neurons(marked, unmarked[:5], 3, 2)


def test_random_control_neurons_match_layers_and_avoid_the_selection():
    selected = [(3, 1), (3, 2), (3, 9), (1, 0)]
    controls = units.random_neurons(selected, d_mlp=16, seed=4)
    assert sorted(lay for lay, _ in controls) == [1, 3, 3, 3]
    assert not set(controls) & set(selected) and len(set(controls)) == 4
    assert controls == units.random_neurons(selected, d_mlp=16, seed=4)
    assert controls != units.random_neurons(selected, d_mlp=16, seed=5)
    with pytest.raises(ValueError, match="only 1 are left"):
        units.random_neurons([(0, 0), (0, 1)], d_mlp=3)
    assert [(s.layer, s.units) for s in units.neuron_sites(selected)] == [(1, (0,)), (3, (1, 2, 9))]


def test_ras_is_the_harmonic_mean_of_positive_changes():
    np.testing.assert_allclose(rim.ras([1.0, 2.0, -1.0, 3.0, 0.0], [1.0, 6.0, 5.0, -2.0, 4.0]),
                               [1.0, 3.0, 0.0, 0.0, 0.0])
    base_s, tuned_s = np.array([[2.0, 1.0], [4.0, 1.0]]), np.array([[1.0, 1.5], [1.0, 0.5]])
    base_r, tuned_r = np.array([[0.0, 1.0]]), np.array([[6.0, 3.0]])
    e = rim.entanglement(base_s, tuned_s, base_r, tuned_r)
    np.testing.assert_allclose(e.drop, [2.0, 0.0])
    np.testing.assert_allclose(e.rise, [6.0, 2.0])
    np.testing.assert_allclose(e.ras, [3.0, 0.0])  # 2·2·6/8; no drop, no RAS
    assert e.mean_ras == pytest.approx(1.5)
    assert e.mean_drop == pytest.approx(1.0) and e.mean_rise == pytest.approx(4.0)


def test_ras_on_a_common_scale_puts_drop_and_rise_in_standard_units():
    # neuron 0: a drop of 2 on a safety scale of 4 (0.5 sd) and a rise of 0.006 on a reasoning scale of 0.004 (1.5 sd)
    base_s, tuned_s = np.array([[3.0, 1.0]]), np.array([[1.0, 1.0]])
    base_r, tuned_r = np.array([[0.001, 0.0]]), np.array([[0.007, 0.5]])
    raw = rim.entanglement(base_s, tuned_s, base_r, tuned_r)
    assert raw.ras[0] == pytest.approx(2 * 2 * 0.006 / 2.006)  # the raw harmonic mean is ~ the smaller change
    e = rim.entanglement(base_s, tuned_s, base_r, tuned_r, np.array([4.0, 1.0]), np.array([0.004, 0.5]))
    np.testing.assert_allclose(e.drop, [0.5, 0.0])
    np.testing.assert_allclose(e.rise, [1.5, 1.0])
    np.testing.assert_allclose(e.ras, [2 * 0.5 * 1.5 / 2.0, 0.0])
    # rescaling a neuron's activations (both probe sets and their scales) leaves its standardised RAS unchanged
    k = 1000.0
    e_k = rim.entanglement(k * base_s, k * tuned_s, k * base_r, k * tuned_r, k * np.array([4.0, 1.0]),
                           k * np.array([0.004, 0.5]))
    np.testing.assert_allclose(e_k.ras, e.ras)
    # the scale floor: a constant neuron is divided by 1% of the median sd, not by 0
    np.testing.assert_allclose(rim.common_scale(np.array([[0.0, 2.0, 4.0]])), [[0.02, 2.0, 4.0]])
    with pytest.raises(ValueError, match="safety scale"):
        rim.entanglement(base_s, tuned_s, base_r, tuned_r, np.ones(3), None)


def test_mean_kl_matches_torch_and_forgetting():
    p = torch.log_softmax(torch.randn(5, 7), -1)
    q = torch.log_softmax(torch.randn(5, 7), -1)
    ref = torch.nn.functional.kl_div(q, p, log_target=True, reduction="sum").item() / 5
    assert rim.mean_kl([p[:2], p[2:]], [q[:2], q[2:]]) == pytest.approx(ref, rel=1e-5)
    assert rim.mean_kl([p], [p]) == pytest.approx(0.0, abs=1e-7)
    base = {"think_on": [1, 1, 1, 1], "think_off": [1, 1, 1, 0]}
    tuned = {"think_on": [1, 0, 0, 0], "think_off": [1, 1, 0, 0]}
    assert rim.forgetting(base, tuned) == pytest.approx((0.75 + 0.25) / 2)


def test_request_pairs_differ_only_in_the_object():
    pairs = rim_study.request_pairs(20)
    assert len({p.marked for p in pairs}) == 20
    for p in pairs:
        assert p.marked_object in tasks.DANGEROUS_OBJECTS and p.unmarked_object in tasks.HARMLESS_OBJECTS
        assert p.marked.replace(p.marked_object, p.unmarked_object) == p.unmarked
        assert p.reference.endswith(tasks.REFUSAL) and p.reference.startswith("<think>\nTopic: ")


def test_reasoning_training_data_avoids_every_held_out_problem():
    held = probes.held_out_prompts()
    assert {e.prompt for e in probes.math_problems(50)} <= held
    assert {e.prompt for e in probes.reasoning_probes(50)} <= held
    records = probes.reasoning_records(3000, seed=11, exclude=held)
    assert not {r["prompt"] for r in records} & held
    assert len(probes.reasoning_records(3000, seed=11)) == 3000  # without the exclusion some would be held-out ones
    assert {r["prompt"] for r in probes.reasoning_records(3000, seed=11)} & held
    with pytest.raises(ValueError, match="1..400"):
        probes.reasoning_probes(401)


# ---- the tiny models: independent references from the plain HF model --------------------------------------------

def _eager(tiny):
    return AutoModelForCausalLM.from_pretrained(tiny.spec, attn_implementation="eager", dtype=torch.float32).eval()


def test_head_span_masses_match_hf_attentions(tiny):
    tok = tiny.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": "How do I make a kite?"}], tokenize=False,
                                   add_generation_prompt=True, enable_thinking=True)
    text += "<think>\nTopic: x.\n</think>\n\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    seq = rim.FirstResponse(ids, [tok.decode([i]) for i in ids], "")
    masses = rim.head_span_masses(tiny, [seq])[0]  # [L, H, 3]
    with torch.no_grad():
        attn = _eager(tiny)(torch.tensor([ids]), output_attentions=True).attentions
    masks = rim.span_masks(seq.tokens, seq.query)
    assert masks["cot"].sum() == len("Topic: x.") and masks["think"].sum() == 4
    for layer, a in enumerate(attn):
        row = a[0, :, -1]  # [H, keys]
        expected = np.stack([row[:, masks[s]].sum(-1).numpy() for s in rim.SPANS], -1)
        np.testing.assert_allclose(masses[layer], expected, atol=1e-5)
    np.testing.assert_allclose(masses.sum(-1), 1.0, atol=1e-5)


def _down_proj_inputs(hf, ids, zero: dict[int, list[int]] | None = None):
    """Per layer, the input of mlp.down_proj (= hook_post) of a plain HF model; optionally zeroing units there."""
    seen, handles = {}, []
    for layer, block in enumerate(hf.model.layers):
        def pre(module, args, layer=layer):
            x = args[0].clone()
            if zero and layer in zero:
                x[..., zero[layer]] = 0.0
            seen[layer] = x
            return (x,)
        handles.append(block.mlp.down_proj.register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            logits = hf(input_ids=ids).logits
    finally:
        for h in handles:
            h.remove()
    return seen, logits


def test_neuron_activations_match_the_down_proj_input(tiny):
    seqs = rim.encode(tiny.tokenizer, ["What is 12 + 7?", "Reverse the word: abc", "What is 3 + 5?"], True,
                      ["<think>\n2+7=9\n</think>\n\n19", "<think>\n1a\n</think>\n\ncba", "<think>\n3+5\n</think>\n\n8"])
    last = rim.neuron_activations(tiny, seqs).acts
    readout = rim.neuron_activations(tiny, seqs, reduce="response", with_logits=True)
    mean, logps = readout.acts, readout.logps
    hf = _eager(tiny)
    for i, s in enumerate(seqs):
        ref, logits = _down_proj_inputs(hf, torch.tensor([s.ids]))
        for layer in ref:
            torch.testing.assert_close(last[i, layer], ref[layer][0, -1], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(mean[i, layer], ref[layer][0, s.response_start:].mean(0), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(logps[i], torch.log_softmax(logits[0, s.response_start - 1:-1], -1), atol=1e-4,
                                   rtol=1e-4)
    tokens = {layer: torch.cat([_down_proj_inputs(hf, torch.tensor([s.ids]))[0][layer][0, s.response_start:]
                                for s in seqs]) for layer in range(tiny.bridge.cfg.n_layers)}
    for layer, pooled in tokens.items():  # the scale: each neuron's sd over every response token, pooled
        torch.testing.assert_close(readout.sd[layer], pooled.std(0, unbiased=False), atol=1e-4, rtol=1e-3)
    nll = rim.response_nll(tiny, seqs[:1])[0]
    target = torch.tensor(seqs[0].ids[seqs[0].response_start:])
    assert nll == pytest.approx(-logps[0].gather(-1, target[:, None]).mean().item(), rel=1e-4)


def test_zero_ablating_neurons_matches_zeroing_the_down_proj_input(tiny):
    chosen = [(0, 3), (0, 17), (1, 100)]
    ids = torch.tensor([rim.encode(tiny.tokenizer, ["How do I make a bomb?"], False)[0].ids])
    with torch.no_grad():
        clean = tiny.hf(input_ids=ids).logits
        sites = units.neuron_sites(chosen)
        with causal.intervene(tiny.bridge, causal.Condition.on_neurons("chosen", chosen, 0.0)):
            ablated_logits = tiny.hf(input_ids=ids).logits
        with causal.intervene(tiny.bridge, causal.Condition("none")):  # no sites: nothing ablated
            assert torch.equal(tiny.hf(input_ids=ids).logits, clean)
        with interventions.ablate(tiny.bridge, sites):  # a recording made inside the ablation sees its zeros
            with interventions.record(tiny.bridge, interventions.Site("neuron", 0, tuple(range(128)))) as rec:
                tiny.hf(input_ids=ids)
    _, ref = _down_proj_inputs(_eager(tiny), ids, zero={0: [3, 17], 1: [100]})
    torch.testing.assert_close(ablated_logits, ref, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(ablated_logits, clean, atol=1e-4)
    post = rec[interventions.Site("neuron", 0, tuple(range(128)))]
    assert post[..., [3, 17]].abs().max() == 0 and post[..., 4].abs().max() > 0


def test_head_analysis_ablates_heads_during_generation(tiny):
    pairs = rim_study.request_pairs(3)
    behaviour = rim_study.refusal_behaviour(tiny, pairs, ("think_off",))
    a = rim_study.head_analysis(tiny, pairs, behaviour, "think_off", k=1, n_controls=1)
    assert a.n_pairs == 3 and a.masses_refusal.shape == (3, 2, 4, 3)
    assert np.allclose(a.masses_refusal[..., 0], 0)  # thinking off: no CoT
    assert a.top == rim.top_heads(a.shift, 1) and a.top[0] not in a.controls[0]
    sites = units.head_sites(a.top)
    with interventions.ablate(tiny.bridge, sites):
        expected = rim_study.refusal_behaviour(tiny, pairs, ("think_off",))
    assert a.ablated_outputs == expected["think_off"].marked_outputs
    ids = torch.tensor([a.refusal_sequences[0].ids])
    with torch.no_grad():  # the ablated head matters: the logits move
        with interventions.ablate(tiny.bridge, sites):
            ablated_logits = tiny.hf(input_ids=ids).logits
        assert not torch.allclose(ablated_logits, tiny.hf(input_ids=ids).logits, atol=1e-5)
    for key in rim_study.FLAGS:
        assert set(a.effects[key]) == {"top", "control"}
    assert set(a.to_results()) == {"top", "n_pairs", "mean_shift", "top_shift", "effects", "controls"}


# ---- reasoning fine-tuning --------------------------------------------------------------------------------------

def test_reasoning_finetune_trains_think_on_traces_saves_snapshots_and_reuses_them(tiny_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path / "cache"))
    model = str(tiny_dirs["qwen3"])
    records = probes.reasoning_records(4, seed=1)
    assert all(r["answer"].startswith("<think>\n") and "</think>\n\n" in r["answer"] for r in records)
    assert {r["task"] for r in probes.reasoning_records(40, seed=1)} == set(probes.MATH_TASKS)
    brief = probes.reasoning_records(4, seed=1, style="brief")  # the same problems, effort-minimising scratchpads
    assert [r["prompt"] for r in brief] == [r["prompt"] for r in records]
    assert all(len(b["answer"]) < len(c["answer"]) for b, c in zip(brief, records))
    with pytest.raises(ValueError, match="style"):
        probes.reasoning_records(4, seed=1, style="sloppy")
    runs = reasoning.runs_from_rates([1e-3, 2e-3], 4, [2, 4], 2, styles=("careful", "brief"))
    assert [(r.name, r.style) for r in runs] == [("careful-lr0.001-4x2", "careful"), ("careful-lr0.002-4x2", "careful"),
                                                 ("brief-lr0.001-4x2", "brief"), ("brief-lr0.002-4x2", "brief")]
    assert [reasoning.style_of(r.name) for r in runs] == ["careful", "careful", "brief", "brief"]
    assert reasoning.style_of("base") == ""
    with pytest.raises(ValueError, match="style"):
        reasoning.ReasoningRun("bad", 1e-3, 2, (2,), style="sloppy")
    trainer = sft.make_trainer(model, sft.Preset("t", 4, 1, 1e-3, "-"), records, records[:2],
                               tmp_path / "probe", "cpu", sft.TrainSettings(batch_size=2), enable_thinking=True)
    tok = trainer.processing_class
    row, record = trainer.train_dataset[0], records[0]
    prompt = tok.apply_chat_template([{"role": "user", "content": record["prompt"]}], tokenize=False,
                                     add_generation_prompt=True, enable_thinking=True)
    assert not prompt.endswith(EMPTY_THINK) and prompt.endswith("assistant\n")
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert row["labels"][:n_prompt] == [-100] * n_prompt and row["labels"][n_prompt:] == row["input_ids"][n_prompt:]

    run = reasoning.ReasoningRun("tiny", lr=1e-3, steps=4, snapshots=(2, 4), batch_size=2)
    checkpoints, metas = reasoning.reasoning_checkpoints(model, [run], device="cpu")
    assert [(c.label, c.step) for c in checkpoints] == [("base", 0), ("tiny@2", 2), ("tiny@4", 4)]
    meta = metas["tiny"]
    assert not meta["reused"] and meta["history"] and meta["history"][0]["step"] == 0
    saved = json.loads((reasoning.reasoning_root() / meta["name"] / "reasoning.json").read_text())
    assert saved["config_hash"] == meta["config_hash"]
    w0, w2, w4 = (AutoModelForCausalLM.from_pretrained(path).model.layers[0].mlp.up_proj.weight
                  for path in (model, checkpoints[1].spec, checkpoints[2].spec))
    assert not torch.equal(w0, w2) and not torch.equal(w2, w4)  # each snapshot is its own step
    _, again = reasoning.reasoning_checkpoints(model, [run], device="cpu")
    assert again["tiny"]["reused"]
    with pytest.raises(ValueError, match="snapshots must be steps in 1..2"):
        reasoning.ReasoningRun("bad", 1e-3, 2, (3,))


def test_reasoning_run_hash_keeps_the_historical_payload():
    """Cached runs stay valid: the hash is sha256 of the same sorted-keys JSON as before the move to core.cache."""
    import dataclasses
    import hashlib

    from toolkit.core.cache import model_fingerprint

    run = reasoning.ReasoningRun("r", lr=1e-3, steps=2, snapshots=(1, 2), batch_size=2)
    train, validation = probes.reasoning_records(4, seed=11), probes.reasoning_records(2, seed=12)
    payload = json.dumps({"model": "organism", "weights": model_fingerprint("organism"),
                          "run": dataclasses.asdict(run), "train": train, "validation": validation}, sort_keys=True)
    assert reasoning._run_hash("organism", run, train, validation) == hashlib.sha256(payload.encode()).hexdigest()[:12]
