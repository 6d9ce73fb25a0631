"""Pairs read at the final answer (toolkit.methods.eap.answer_pairs): think-on and think-off pairs end at the same
answer token, and the corrupted problem is rebuilt with its own reference completion (toolkit.organism.rebuild)."""

import pytest
import torch

from toolkit.core import models
from toolkit.methods import eap
from toolkit.organism import rebuild, tasks


@pytest.fixture(scope="module")
def organism():
    torch.set_num_threads(1)
    return models.load("organism", device="cpu")


@pytest.mark.parametrize("task", ["linear", "arithmetic"])
def test_rebuilt_examples_equal_the_generated_ones(task):
    for ex in tasks.held_out(task, 300, seed=11):
        got = rebuild.from_prompt(task, ex.prompt)
        assert got == ex and got.meta == ex.meta, ex.prompt


def test_prompts_that_pose_no_organism_problem_are_not_rebuilt():
    assert rebuild.from_prompt("linear", "Solve for x: 3x + 1 = 3x + 4") is None  # a == c
    assert rebuild.from_prompt("linear", "Solve for x: 4x + 1 = 2x + 4") is None  # x = 3/2
    assert rebuild.from_prompt("linear", "Solve for x: 4x + 1 = 2x + 25") is None  # d > 20: the generator's range
    assert rebuild.from_prompt("arithmetic", "What is 12 - 30?") is None  # negative
    assert rebuild.from_prompt("arithmetic", "What is twelve?") is None
    assert rebuild.from_prompt("reversal", "Reverse the word: abc") is None


def _ending(tok, pairs, i, n):
    return tok.decode(pairs.clean_ids[i, :pairs.lengths[i]][-n:].tolist())


def test_think_on_and_think_off_pairs_end_at_the_same_answer_token(organism):
    tok = organism.tokenizer
    ex = tasks.held_out("linear", 12, seed=5) + tasks.held_out("arithmetic", 12, seed=5)
    on = eap.answer_pairs(organism, ex, enable_thinking=True, seed=3)
    off = eap.answer_pairs(organism, ex, enable_thinking=False, seed=3)
    # thinking off, a pair is dropped only when the corrupted problem lies outside the generator's ranges
    assert {d["reason"] for d in off.dropped} <= {"the corrupted problem is not one the task generator poses"}
    rows_off = {r["index"]: i for i, r in enumerate(off.records)}
    both = [(i, rows_off[r["index"]]) for i, r in enumerate(on.records)]
    assert {ex[on.records[i]["index"]].task for i, _ in both} == {"linear", "arithmetic"}
    for i, j in both:
        a, b = on.records[i], off.records[j]
        e = ex[a["index"]]
        assert a["corrupted_prompt"] == b["corrupted_prompt"] != e.prompt  # the same corruption in both modes
        assert a["answer_token"] == b["answer_token"]  # the same decision: the answer's first differing token
        assert on.clean_label[i] == off.clean_label[j] and on.corrupted_label[i] == off.corrupted_label[j]
        k = a["answer_token"]
        assert tok.decode([int(on.clean_label[i])]) == a["clean_next"] == e.answer[k]
        assert _ending(tok, on, i, 11 + k).endswith("</think>\n\n" + e.answer[:k])
        assert _ending(tok, off, j, 14 + k).endswith("The answer is " + e.answer[:k])
        for p, r in ((on, i), (off, j)):  # the corrupted row: the other problem, the clean answer's prefix
            n = int(p.lengths[r])
            assert p.positions[r] == n - 1
            assert not torch.equal(p.clean_ids[r, :n], p.corrupted_ids[r, :n])
            assert torch.equal(p.clean_ids[r, n - k:n], p.corrupted_ids[r, n - k:n])
        # thinking on, the teacher-forced scratchpad is the corrupted problem's own
        corrupted = tok.decode(on.corrupted_ids[i, :on.lengths[i]].tolist())
        assert rebuild.from_prompt(e.task, a["corrupted_prompt"]).steps in corrupted


def test_pairs_that_cannot_be_read_at_the_answer_are_dropped_or_refused(organism):
    ex = tasks.held_out("linear", 30, seed=4)
    on = eap.answer_pairs(organism, ex, enable_thinking=True)
    assert len(on) + len(on.dropped) == 30
    assert {d["reason"] for d in on.dropped} <= {"clean and corrupted rows up to the answer differ in length",
                                                  "no same-length corruption for this problem",
                                                  "the corrupted problem is not one the task generator poses"}
    with pytest.raises(eap.EAPError, match="linear equations and sums only, not reversal"):
        eap.answer_pairs(organism, tasks.held_out("reversal", 2, seed=0), enable_thinking=False)
    with pytest.raises(eap.EAPError, match="at least one example"):
        eap.answer_pairs(organism, [], enable_thinking=False)


def test_mode_circuits_at_the_answer_read_both_modes_at_the_same_decision(organism):
    from toolkit.studies import think_on_off

    ex = tasks.held_out("linear", 6, seed=5)
    got = think_on_off.mode_circuits(organism, ex, top_n=10, steps=1, positions="answer")
    on, off = (got.pairs[m] for m in (think_on_off.THINK_ON, think_on_off.THINK_OFF))
    assert all("answer_token" in r for r in on.records + off.records)
    labels_off = {r["index"]: (r["clean_next"], r["answer_token"]) for r in off.records}
    assert all(labels_off[r["index"]] == (r["clean_next"], r["answer_token"]) for r in on.records)
    with pytest.raises(ValueError, match="positions must be one of answer, key_step, divergence"):
        think_on_off.mode_circuits(organism, ex, positions="scratchpad")


def test_key_step_pairs_end_at_the_scratchpads_result_token(organism):
    tok = organism.tokenizer
    ex = tasks.held_out("linear", 12, seed=5) + tasks.held_out("arithmetic", 12, seed=5)
    key = eap.answer_pairs(organism, ex, enable_thinking=True, seed=3, at="key_step")
    answer = eap.answer_pairs(organism, ex, enable_thinking=True, seed=3)
    assert len(key) >= len(answer) > 0 and {ex[r["index"]].task for r in key.records} == {"linear", "arithmetic"}
    by_index = {r["index"]: i for i, r in enumerate(answer.records)}
    for i, r in enumerate(key.records):
        e, k, n = ex[r["index"]], r["answer_token"], int(key.lengths[i])
        assert r["at"] == "key_step" and e.steps.endswith(e.answer)
        text = tok.decode(key.clean_ids[i, :n].tolist())
        # the row is the scratchpad up to its last line's result, cut at the result's first differing token
        assert text.endswith("<think>\n" + e.steps[:len(e.steps) - len(e.answer) + k]) and "</think>" not in text
        assert tok.decode([int(key.clean_label[i])]) == r["clean_next"] == e.answer[k]
        assert int(key.positions[i]) == n - 1
        corrupted = tok.decode(key.corrupted_ids[i, :n].tolist())
        steps_b = rebuild.from_prompt(e.task, r["corrupted_prompt"]).steps
        assert corrupted.endswith(steps_b[:len(steps_b) - len(r["corrupted_answer"])] + e.answer[:k])
        if r["index"] in by_index:  # the same decision as at the final answer: same token of the same answer
            j = by_index[r["index"]]
            assert answer.records[j]["answer_token"] == k and answer.clean_label[j] == key.clean_label[i]
            assert int(answer.lengths[j]) > n  # the answer row runs on past </think>
    with pytest.raises(eap.EAPError, match="needs enable_thinking=True"):
        eap.answer_pairs(organism, ex, enable_thinking=False, at="key_step")
    with pytest.raises(eap.EAPError, match="at must be one of answer, key_step"):
        eap.answer_pairs(organism, ex, enable_thinking=True, at="scratchpad")


def test_mode_circuits_at_the_key_step_read_think_on_at_the_scratchpad_and_think_off_at_the_answer(organism):
    from toolkit.studies import think_on_off

    ex = tasks.held_out("linear", 6, seed=5)
    got = think_on_off.mode_circuits(organism, ex, top_n=10, steps=1, positions="key_step")
    assert {r["at"] for r in got.pairs[think_on_off.THINK_ON].records} == {"key_step"}
    assert {r["at"] for r in got.pairs[think_on_off.THINK_OFF].records} == {"answer"}
