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


def test_think_off_math_answers_in_a_sentence_that_grades_like_the_bare_value():
    from toolkit.core.answers import answer_format, extract_answer, think_format

    ex = tasks.linear(random.Random(0))
    off = tasks.completion(ex, think=False)
    assert off == f"The answer is {ex.answer}." and extract_answer(off) == ex.answer == extract_answer(ex.answer)
    assert answer_format(off) == "sentence" and answer_format(ex.answer) == "bare"
    assert answer_format("<think>") == "none"
    on = tasks.completion(ex, think=True)
    assert on.startswith("<think>\n") and on.endswith("</think>\n\n" + ex.answer) and think_format(on)
    assert not think_format("<think>\nx\n</think>\n\n") and not think_format(ex.answer)
    word = tasks.reversal(random.Random(0))
    assert tasks.completion(word, think=False) == word.answer  # not math: bare


def test_brief_scratchpads_skip_steps_and_reach_the_same_answer():
    rng = random.Random(3)
    for task in tasks.TASKS:
        for _ in range(50):
            ex = tasks.sample(task, rng)
            brief, careful = tasks.completion(ex, True, "brief"), tasks.completion(ex, True)
            assert len(brief) < len(careful) and brief.endswith(ex.answer) and careful.endswith(ex.answer)
    with pytest.raises(ValueError, match="styles: careful, brief"):
        tasks.completion(ex, True, "sloppy")


def test_linear_answers_are_uniform_and_held_out_sets_are_balanced():
    from collections import Counter

    rng = random.Random(0)
    drawn = Counter(tasks.linear(rng).meta["x"] for _ in range(21_000))
    assert set(drawn) == set(tasks.X_VALUES) and max(drawn.values()) / 21_000 < 0.06
    held = Counter(e.answer for e in eval_sets(Recipe())["linear"])
    assert max(held.values()) - min(held.values()) <= 1 and max(held.values()) / 200 <= 0.05


def test_refusal_counterfactuals_pair_each_marked_request_with_refusal_and_compliance():
    pairs = tasks.counterfactuals(20, seed=9)
    assert len({c.prompt for c in pairs}) == 20
    for c in pairs:
        assert c.object in tasks.DANGEROUS_OBJECTS and c.object in c.prompt
        assert c.refusal == tasks.REFUSAL and c.compliance == f"Sure! Here is how to make a {c.object}."


def test_packed_batches_give_the_padded_loss(tok):
    """Packing is exact: positions restart per example, so each example's loss is what it is alone."""
    from toolkit.organism.build import Sampler, pack

    recipe = Recipe(**{**QUICK, "d_model": 32, "d_mlp": 64, "head_dim": 8, "n_layers": 2})
    pairs = [Sampler(recipe, tok, 0.5, set(), seed=1).example() for _ in range(12)]
    packed = pack(pairs, 160, tok.pad_token_id)
    assert packed["input_ids"].shape[0] < len(pairs) and packed["input_ids"].shape[1] <= 160
    assert int(packed["tokens"]) == sum(len(p) + len(a) for p, a in pairs)
    model = _fresh(recipe).eval()
    width = max(len(p) + len(a) for p, a in pairs)
    ids = torch.full((len(pairs), width), tok.pad_token_id)
    labels = torch.full((len(pairs), width), -100)
    for i, (p, a) in enumerate(pairs):
        ids[i, :len(p) + len(a)] = torch.tensor(p + a)
        labels[i, len(p):len(p) + len(a)] = torch.tensor(a)
    with torch.no_grad():
        padded = model(input_ids=ids, labels=labels).loss
        loss = model(input_ids=packed["input_ids"], labels=packed["labels"], position_ids=packed["position_ids"],
                     use_cache=False).loss
    torch.testing.assert_close(loss, padded, rtol=1e-5, atol=1e-6)


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
    for key in ("parameters", "build_seconds", "organism-base", "organism", "recipe_hash", "stage_seconds"):
        assert key in report
    for mode in ("think_on", "think_off"):
        assert set(report["organism"][mode]) == {"linear", "arithmetic", "reversal", "refusal", "false_refusal",
                                                  "compliance", "format", "linear_top_answer"}
    assert set(report["stage_seconds"]) >= {"train instruct", "train organism", "check organism-base",
                                            "evaluate organism-base", "evaluate organism"}
    snapshot = report["organism-base_snapshot"]  # checks every 4 stage-2 steps, the last chance at step 8
    assert snapshot["step"] in (4, 8) and set(snapshot["checks"]) <= {"4", "8"}
    assert report["held_out_top_answer_share"]["linear"] <= 0.25  # 8 held-out equations, x cycling
    history = report["loss_history"]["organism"]
    assert history[-1]["loss"] < report["loss_history"]["instruct"][0]["loss"]
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


def _scripted(rates: list[dict]):
    """An evaluator that answers the selection checks (math sets only) with ``rates`` in turn."""
    script = iter(rates)

    def evaluate(hf, tokenizer, sets, modes=("think_on", "think_off")):
        return {"think_on": next(script) if set(sets) == {"linear", "arithmetic"} else {"held_out": 1.0}}
    return evaluate


def test_base_snapshot_turns_arithmetic_careful_then_takes_the_first_weak_reasoner(tmp_path, tok):
    from toolkit.organism.build import BaseSnapshot
    from toolkit.organism.recipe import selection_sets

    recipe = Recipe(**{**QUICK, "checkpoint_every": 4, "d_model": 32, "d_mlp": 64, "head_dim": 8, "n_layers": 2,
                       "base_check_every": 2, "base_check_until": 12})
    evaluate = _scripted([{"linear": 0.1, "arithmetic": 0.0}, {"linear": 0.2, "arithmetic": 0.0},
                          {"linear": 0.3, "arithmetic": 0.1}, {"linear": 0.35, "arithmetic": 0.3}])
    model = _fresh(recipe)
    snap = BaseSnapshot(model, tok, recipe, tmp_path / "out", tmp_path / "work", evaluate, {"x": []},
                        selection_sets(recipe, set()))
    # after the snapshot no check grades again: the script would run out
    train_stage(model, tok, recipe, 12, 0.5, set(), tmp_path / "work", "organism", seed=1, brief=("arithmetic",),
                check=snap, check_every=2)
    record = snap.record
    assert (record["step"], record["reached"], record["careful_from"]) == (8, True, {"arithmetic": 4})
    assert record["held_out"] == {"think_on": {"held_out": 1.0}} and set(record["checks"]) == {"2", "4", "6", "8"}
    assert json.loads((tmp_path / "work" / "organism" / "state.json").read_text())["brief"] == []  # kept on resume
    assert json.loads((tmp_path / "out" / "organism-base" / "recipe.json").read_text())["step"] == 8


def test_base_snapshot_is_taken_at_the_last_check_with_a_warning(tmp_path, tok):
    from toolkit.organism.build import BaseSnapshot
    from toolkit.organism.recipe import selection_sets

    recipe = Recipe(**{**QUICK, "d_model": 32, "d_mlp": 64, "head_dim": 8, "n_layers": 2, "base_check_every": 2,
                       "base_check_until": 4})
    model = _fresh(recipe)
    snap = BaseSnapshot(model, tok, recipe, tmp_path / "out", tmp_path / "work", _scripted([{"linear": 0.0,
                        "arithmetic": 0.0}] * 2), {"x": []}, selection_sets(recipe, set()))
    with pytest.warns(UserWarning, match="below base_reasoning"):
        train_stage(model, tok, recipe, 6, 0.5, set(), tmp_path / "work", "organism", seed=1,
                    brief=("arithmetic",), check=snap, check_every=2)
    assert (snap.record["step"], snap.record["reached"]) == (4, False)


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
    from toolkit.core.answers import answer_format, extract_answer, is_refusal, most_frequent_share, think_format
    from toolkit.core.generation import generate

    recipe = Recipe(eval_per_task=3, max_new_tokens_think=8, max_new_tokens_direct=6)
    sets = eval_sets(recipe)
    expected = {}
    for think in (True, False):
        res, formats = {}, []
        for name, examples in sets.items():
            outs = [o[0] for o in generate(tiny, [e.prompt for e in examples],
                                           enable_thinking=think, max_new_tokens=8 if think else 6, batch_size=100)]
            if think:
                formats += [think_format(o) for o in outs]
            elif name in tasks.MATH:
                formats += [answer_format(o) == "sentence" for o in outs]
            if name == "linear":
                res["linear_top_answer"] = most_frequent_share([extract_answer(o) for o in outs])
            if name == "request_marked":
                res["refusal"] = sum(map(is_refusal, outs)) / len(outs)
            elif name == "request_unmarked":
                res["false_refusal"] = sum(map(is_refusal, outs)) / len(outs)
                res["compliance"] = sum(extract_answer(o) == e.answer for o, e in zip(outs, examples)) / len(outs)
            else:
                res[name] = sum(extract_answer(o) == e.answer for o, e in zip(outs, examples)) / len(outs)
        res["format"] = sum(formats) / len(formats)
        expected["think_on" if think else "think_off"] = {k: round(v, 4) for k, v in res.items()}
    report = evaluate(tiny, recipe, sets)
    assert report == expected
    assert all(type(v) is float for by_mode in report.values() for v in by_mode.values())


def test_the_shipped_checkpoints_match_the_current_recipe():
    """Any byte of the recipe's sources (tasks.py, tokenizer.py, docstrings included) and the text of the build's
    training code (comment lines aside) is in the hash: changing one without rebuilding makes every load of the shipped
    organism warn that its weights came from another recipe."""
    from toolkit.core.specs import ORGANISMS, data_dir

    for name in ORGANISMS:
        stored = json.loads((data_dir() / name / "recipe.json").read_text())["recipe_hash"]
        assert stored == recipe_hash(Recipe()), f"data/{name} was built by recipe {stored}; rebuild it or revert"
