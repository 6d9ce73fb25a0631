"""The model organism: tokenizer, chat template, tasks, the build recipe in reduced form, and its held-out report."""

import json
import random
import re

import pytest
import torch

from toolkit.organism import tasks
from toolkit.organism.build import NonFiniteLossError, train_stage
from toolkit.organism.recipe import QUICK, Recipe, eval_sets, recipe_hash
from toolkit.organism.tokenizer import CHARACTERS, EMPTY_THINK, build_tokenizer, chat_prompt
from toolkit.studies.organism import build_organism, evaluate, format_report


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_every_character_is_one_token_and_round_trips(tok):
    text = "".join(CHARACTERS)
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) == len(text)
    assert tok.decode(ids) == text
    think = tok.encode("<think>\n\n</think>", add_special_tokens=False)
    assert think == [tok.convert_tokens_to_ids("<think>"), *tok.encode("\n\n", add_special_tokens=False),
                     tok.convert_tokens_to_ids("</think>")]
    assert len(tok) <= Recipe().vocab_size


def test_chat_template_matches_qwen3_layout(tok):
    on = chat_prompt(tok, "What is 1 + 2?", enable_thinking=True)
    off = chat_prompt(tok, "What is 1 + 2?", enable_thinking=False)
    assert on == "<|im_start|>user\nWhat is 1 + 2?<|im_end|>\n<|im_start|>assistant\n"
    assert off == on + EMPTY_THINK
    convo = tok.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                                    tokenize=False)
    assert convo == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"
    mask = tok.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                                   return_assistant_tokens_mask=True, return_dict=True)["assistant_masks"]
    assert sum(mask) == len("yo") + 1  # "yo<|im_end|>" only


def test_tasks_are_deterministic_from_a_seed():
    for task in tasks.TASKS:
        a = [tasks.sample(task, random.Random(7)) for _ in range(3)]
        b = [tasks.sample(task, random.Random(7)) for _ in range(3)]
        assert a == b
    with pytest.raises(ValueError, match="known tasks"):
        tasks.sample("calculus", random.Random(0))


def test_scratchpads_carry_real_steps_that_reach_the_answer():
    rng = random.Random(1)
    for _ in range(300):
        ex = tasks.linear(rng)
        m = ex.meta
        assert m["a"] * m["x"] + m["b"] == m["c"] * m["x"] + m["d"]
        k, r = re.search(r"\n(-?\d+)x = (-?\d+)\n", ex.steps).groups()
        assert int(r) == int(k) * m["x"] and ex.answer == f"x = {m['x']}" and ex.steps.endswith(ex.answer)
        ex = tasks.arithmetic(rng)
        a, op, b = ex.meta["a"], ex.meta["op"], ex.meta["b"]
        assert int(ex.answer) == (a + b if op == "+" else a - b)
        digits = [int(d) for d in re.findall(r"write (\d)", ex.steps)]
        assert int("".join(map(str, reversed(digits)))) == int(ex.answer)
        ex = tasks.reversal(rng)
        assert ex.answer == ex.meta["word"][::-1]
    marked = tasks.request(rng, dangerous=True)
    assert marked.answer == tasks.REFUSAL and marked.meta["object"] in tasks.DANGEROUS_OBJECTS


def test_think_off_completion_is_the_answer_alone():
    ex = tasks.linear(random.Random(0))
    assert tasks.completion(ex, think=False) == ex.answer
    assert tasks.completion(ex, think=True).startswith("<think>\n") and "</think>\n\n" in tasks.completion(ex, True)


def test_held_out_sets_are_disjoint_and_never_drawn_for_training(tok):
    from toolkit.organism.build import Sampler

    held_out = {e.prompt for exs in eval_sets(Recipe()).values() for e in exs}
    assert len(held_out) == 5 * Recipe().eval_per_task
    excluding = Sampler(Recipe(), tok, 0.5, held_out, seed=0)
    assert not {excluding.draw()[0].prompt for _ in range(3000)} & held_out
    unfiltered = Sampler(Recipe(), tok, 0.5, set(), seed=0)
    assert {unfiltered.draw()[0].prompt for _ in range(3000)} & held_out, "collisions must be possible"


def test_reduced_build_writes_loadable_checkpoints_and_a_report(tmp_path):
    from toolkit.core.models import load

    report = build_organism(tmp_path, Recipe(**QUICK))
    for key in ("parameters", "build_seconds", "organism-base", "organism", "recipe_hash"):
        assert key in report
    for mode in ("think_on", "think_off"):
        assert set(report["organism"][mode]) == {"linear", "arithmetic", "reversal", "refusal", "false_refusal",
                                                  "compliance"}
    history = report["loss_history"]["organism"]
    assert history[-1]["loss"] < report["loss_history"]["organism-base"][0]["loss"]
    assert json.loads((tmp_path / "organism_report.json").read_text())["parameters"] == report["parameters"]
    meta = json.loads((tmp_path / "organism" / "recipe.json").read_text())
    assert meta["recipe_hash"] == recipe_hash(Recipe(**QUICK)) != recipe_hash(Recipe())
    m = load(str(tmp_path / "organism"))
    assert m.bridge.cfg.n_key_value_heads < m.bridge.cfg.n_heads
    assert not (tmp_path / ".organism-build").exists()
    for stage in ("organism", "organism-base"):  # written beside and swapped in: no half folder left over
        assert {"config.json", "model.safetensors", "recipe.json", "tokenizer.json"} <= {
            p.name for p in (tmp_path / stage).iterdir()}
    assert not list(tmp_path.glob("*.tmp"))
    assert "organism-base  think_off" in format_report(report)


def _fresh(recipe):
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(recipe.seed)
    return Qwen3ForCausalLM(recipe.model_config())


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, tok, monkeypatch):
    recipe = Recipe(**{**QUICK, "checkpoint_every": 3, "d_model": 32, "d_mlp": 64, "head_dim": 8, "n_layers": 2})
    straight = _fresh(recipe)
    train_stage(straight, tok, recipe, 8, 0.5, set(), tmp_path / "a", "s", seed=5)

    from toolkit.organism import build as build_module

    calls = {"n": 0}
    real_batch = build_module.Sampler.batch

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real_batch(self)

    interrupted = _fresh(recipe)
    monkeypatch.setattr(build_module.Sampler, "batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        train_stage(interrupted, tok, recipe, 8, 0.5, set(), tmp_path / "b", "s", seed=5)
    monkeypatch.setattr(build_module.Sampler, "batch", real_batch)
    resumed = _fresh(recipe)
    train_stage(resumed, tok, recipe, 8, 0.5, set(), tmp_path / "b", "s", seed=5)
    for (name, p), q in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), f"{name} differs after resuming"  # bitwise: the state (safetensors) is exact


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path, tok):
    recipe = Recipe(**{**QUICK, "checkpoint_every": 2, "d_model": 32, "d_mlp": 64, "head_dim": 8, "n_layers": 2,
                       "lr": 1e30})
    model = _fresh(recipe)
    with pytest.raises(NonFiniteLossError, match="last good checkpoint"):
        train_stage(model, tok, recipe, 12, 0.5, set(), tmp_path / "w", "s", seed=0)
    assert (tmp_path / "w" / "s" / "state.json").exists()


def test_held_out_report_grades_like_a_hand_written_generate_extract_grade_loop(tiny):
    """The report on the behaviour layer equals the original loop: greedy generate in batches of 100,
    exact-match final answers, refusal by prefix, rates as sum / n rounded to 4 digits."""
    from toolkit.core.answers import extract_answer, is_refusal
    from toolkit.core.generation import generate

    recipe = Recipe(eval_per_task=3, max_new_tokens_think=8, max_new_tokens_direct=6)
    sets = eval_sets(recipe)
    expected = {}
    for think in (True, False):
        res = {}
        for name, examples in sets.items():
            outs = [o[0] for o in generate(tiny.hf, tiny.tokenizer, [e.prompt for e in examples],
                                           enable_thinking=think, max_new_tokens=8 if think else 6, batch_size=100)]
            if name == "request_marked":
                res["refusal"] = sum(map(is_refusal, outs)) / len(outs)
            elif name == "request_unmarked":
                res["false_refusal"] = sum(map(is_refusal, outs)) / len(outs)
                res["compliance"] = sum(extract_answer(o) == e.answer for o, e in zip(outs, examples)) / len(outs)
            else:
                res[name] = sum(extract_answer(o) == e.answer for o, e in zip(outs, examples)) / len(outs)
        expected["think_on" if think else "think_off"] = {k: round(v, 4) for k, v in res.items()}
    report = evaluate(tiny.hf, tiny.tokenizer, recipe, sets)
    assert report == expected
    assert all(type(v) is float for by_mode in report.values() for v in by_mode.values())
