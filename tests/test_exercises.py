"""The teaching track: the check library's verdicts, the master → notebook generator, the committed notebooks being
what their masters generate, the solution notebooks passing every check, and one deliberately wrong solution per
lesson failing its check (the exercise notebooks themselves run in JupyterLab in test_browser.py)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from toolkit.course import checks as ex
from toolkit.run import exercises as gen
from toolkit.run import runner

ROOT = Path(__file__).resolve().parent.parent
EXERCISES = ROOT / "notebooks" / "exercises"
LESSONS = [m.stem for m in gen.masters()]


# --------------------------------------------------------------------------------------------- the check library
def _double(x):
    return x * 2


def _stub(x):
    raise NotImplementedError


@pytest.mark.parametrize("learner, status, words", [
    (_double, "passed", ""),
    (_stub, "not implemented", "raise NotImplementedError"),
    (lambda x: x[5], "raised", "IndexError"),
    (lambda x: x[:2] * 2, "wrong shape", "got (2,), expected (3,)"),
    (lambda x: x.double() * 2, "wrong dtype", "got torch.float64, expected torch.float32"),
    (lambda x: x * float("nan"), "nan", "nan at index [0]"),
    (lambda x: x * torch.tensor([2.0, 2.0, 3.0]), "wrong value", "got 6, expected 4 at index [2]"),
    (lambda x: x.numpy() * 2, "wrong type", "array of shape (3,)"),
])
def test_check_reports_each_outcome_in_one_line(learner, status, words, capsys):
    result = ex.check(learner, _double, torch.tensor([1.0, 1.0, 2.0]), name="double")
    assert result.status == status and result.passed == (status == "passed")
    assert words in result.message
    printed = capsys.readouterr().out.strip()
    assert printed == str(result) and "\n" not in printed and printed.startswith(("✓", "·", "✗"))


def test_containers_name_the_path_of_the_first_mismatch():
    status, message = ex.compare({"a": [1.0, {"b": 2.0}]}, {"a": [1.0, {"b": 2.5}]})
    assert status == "wrong value" and "['a'][1]['b']" in message and "got 2, expected 2.5" in message
    assert ex.compare({"a": 1.0}, {"a": 1.0, "b": 2.0}) == ("wrong keys", "missing ['b']")
    assert ex.compare([1.0], [1.0, 2.0])[0] == "wrong length"
    assert ex.compare("x", 1.0)[0] == "wrong type"
    assert ex.compare(torch.tensor(1.0), np.float64(1.0))[0] == "passed"  # numbers of any kind compare
    assert ex.compare(np.array([1.0, math.inf]), np.array([1.0, 2.0]))[0] == "nan"


def test_tolerances_are_applied():
    assert ex.compare(1.0 + 1e-7, 1.0)[0] == "passed"
    assert ex.compare(1.0 + 1e-7, 1.0, atol=0, rtol=1e-9)[0] == "wrong value"


def test_the_reference_s_own_errors_propagate():
    with pytest.raises(ZeroDivisionError):
        ex.check(_double, lambda x: 1 / 0, 1.0, verbose=False)


def test_summary_prints_a_parsable_line(capsys):
    results = [ex.CheckResult("a", "passed", ""), ex.CheckResult("b", "not implemented", "")]
    assert ex.summary(results) == {"a": "passed", "b": "not implemented"}
    line = [s for s in capsys.readouterr().out.splitlines() if s.startswith(ex.SUMMARY_PREFIX)][0]
    assert json.loads(line.removeprefix(ex.SUMMARY_PREFIX)) == {"a": "passed", "b": "not implemented"}


# --------------------------------------------------------------------------------------------------- the generator
MASTER = '''# %% [markdown]
# # Title
#
# text

# %%
def f(x):
    """doc"""
    # BEGIN EXERCISE
    # hint
    # END EXERCISE
    # BEGIN SOLUTION
    y = x + 1
    return y
    # END SOLUTION


# %%
check(f)
'''


def test_master_gives_stub_and_solution_cells():
    exercise, solution = (gen.build(MASTER, solution=s) for s in (False, True))
    assert [c.cell_type for c in exercise.cells] == ["markdown", "code", "code"]
    assert exercise.cells[0].source == "# Title\n\ntext"
    assert exercise.cells[1].source == 'def f(x):\n    """doc"""\n    # hint\n    raise NotImplementedError'
    assert solution.cells[1].source == 'def f(x):\n    """doc"""\n    y = x + 1\n    return y'
    assert exercise.cells[2].source == solution.cells[2].source == "check(f)"
    assert [c.id for c in exercise.cells] == ["cell-00", "cell-01", "cell-02"]
    assert nbformat.writes(gen.build(MASTER, False)) == nbformat.writes(exercise)  # deterministic


@pytest.mark.parametrize("bad, words", [
    ("# %%\n# BEGIN SOLUTION\nx = 1\n", "unclosed SOLUTION"),
    ("# %%\n# END SOLUTION\n", "END SOLUTION without BEGIN"),
    ("# %%\n# BEGIN SOLUTION\n# BEGIN EXERCISE\n", "inside a SOLUTION block"),
    ("x = 1\n# %%\n", "before the first"),
])
def test_malformed_masters_are_refused(bad, words):
    with pytest.raises(gen.MasterError, match=words):
        gen.build(bad, solution=False)


def test_generate_writes_then_reports_up_to_date(tmp_path):
    (tmp_path / "masters").mkdir()
    (tmp_path / "masters" / "07_demo.py").write_text(MASTER)
    written = gen.generate(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == ["07_demo.ipynb",
                                                                          "solutions/07_demo.ipynb"]
    assert gen.generate(tmp_path, check=True) == []
    (tmp_path / "07_demo.ipynb").write_text("{}")
    assert gen.generate(tmp_path, check=True) == [tmp_path / "07_demo.ipynb"]


def test_committed_notebooks_are_what_the_masters_generate():
    assert LESSONS, "no masters in notebooks/exercises/masters"
    stale = gen.generate(check=True)
    assert not stale, f"out of date (run `python -m toolkit exercises`): {[str(p) for p in stale]}"


def test_exercise_notebooks_stay_out_of_the_notebook_runs():
    assert not any("exercises" in p.parts for p in runner.resolve_notebooks([]))


# ------------------------------------------------------------------------------- the notebooks, executed
def _execute(path: Path, out: Path) -> tuple[dict[str, str], float]:
    """Run ``path`` under papermill with the project's kernel; its summary line's statuses and the seconds."""
    from toolkit.run.engine import execute_notebook

    t0 = time.perf_counter()
    execute_notebook(str(path), str(out), params={}, kernel=runner.ensure_kernel(), cwd=str(path.parent))
    seconds = time.perf_counter() - t0
    texts = [o.get("text", "") for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code"
             for o in c.outputs if o.get("output_type") == "stream"]
    lines = [line for text in texts for line in text.splitlines() if line.startswith(ex.SUMMARY_PREFIX)]
    assert len(lines) == 1, f"{path.name}: expected one summary line, got {lines}"
    return json.loads(lines[0].removeprefix(ex.SUMMARY_PREFIX)), seconds


@pytest.fixture
def one_thread_kernels(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.slow
@pytest.mark.parametrize("lesson", LESSONS)
def test_solution_notebook_passes_every_check(lesson, tmp_path, one_thread_kernels):
    statuses, seconds = _execute(EXERCISES / "solutions" / f"{lesson}.ipynb", tmp_path / "out.ipynb")
    assert len(statuses) >= 3 and set(statuses.values()) == {"passed"}, statuses
    assert seconds < 600, f"{lesson}: {seconds:.0f} s"


# The exercise notebooks (the stubs) run to the end with every check "not implemented": test_browser's
# test_exercise_notebook runs each one in JupyterLab and reads the same summary line from its rendered output.


# --------------------------------------------------------------------------- a wrong solution fails its check
@pytest.fixture(scope="module")
def lesson_03():
    from toolkit.course import eap_ig

    torch.set_num_threads(1)
    os.environ["HF_HUB_OFFLINE"] = "1"
    return eap_ig, eap_ig.setup()


@pytest.fixture(scope="module")
def lesson_05():
    from toolkit.course import think_on_off

    torch.set_num_threads(1)
    return think_on_off, think_on_off.setup()


def test_lesson_03_a_right_sum_over_the_wrong_end_of_the_path_fails(lesson_03):
    lesson, data = lesson_03
    right = lesson.check_integrated_gradient(lambda at, m: sum(at(k / m) for k in range(m)) / m, data, verbose=False)
    wrong = lesson.check_integrated_gradient(lambda at, m: sum(at((k + 1) / m) for k in range(m)) / m, data,
                                             verbose=False)
    assert right.passed and wrong.status == "wrong value", wrong


def test_lesson_03_interleaved_kv_groups_and_a_bad_shape_fail(lesson_03):
    lesson, data = lesson_03
    interleaved = lesson.check_group_kv(lambda x, r: x.reshape(x.shape[0], r, -1).sum(1), data, verbose=False)
    assert interleaved.status == "wrong value", interleaved
    shape = lesson.check_group_kv(lambda x, r: x.sum(1), data, verbose=False)
    assert shape.status == "wrong shape", shape


def test_lesson_05_the_plug_in_estimator_and_a_position_ablation_fail(lesson_05):
    lesson, data = lesson_05
    plug_in = lesson.check_pass_at_k(lambda n, c, k: 1 - (1 - c / n) ** k, data, verbose=False)
    assert plug_in.status == "wrong value" and "n=2, c=1, k=2" in plug_in.message, plug_in

    def positions(heads):  # zeroes positions, not heads
        return lambda z, hook: z.index_fill(1, torch.tensor(heads), 0.0)

    assert lesson.check_zero_heads_hook(positions, data, verbose=False).status == "wrong value"
    assert lesson.check_success_over_orders(lambda row: np.logical_or.accumulate(row), data,
                                            verbose=False).status == "wrong dtype"


@pytest.fixture(scope="module")
def lesson_06():
    from toolkit.course import rim

    torch.set_num_threads(1)
    os.environ["HF_HUB_OFFLINE"] = "1"
    return rim, rim.setup()


def test_lesson_06_untrimmed_cot_and_a_flipped_shift_fail(lesson_06):
    lesson, data = lesson_06
    from toolkit.methods import rim

    def untrimmed(tokens, query):  # the CoT keeps the whitespace inside the block
        masks = rim.span_masks(tokens, query)
        start = max(i for i in range(query + 1) if tokens[i] == "<think>")
        end = min(i for i in range(start + 1, query + 1) if tokens[i] == "</think>")
        cot = np.zeros(query + 1, dtype=bool)
        cot[start + 1:end] = True
        return {"cot": cot, "think": masks["think"] & ~cot, "rest": masks["rest"]}

    assert lesson.check_span_masks(untrimmed, data, verbose=False).status == "wrong value"

    def flipped(refuse, comply, k):  # cot − think: the opposite shift
        shift = -rim.head_shift(refuse, comply)
        return {"shift": shift, "top": rim.top_heads(shift, k)}

    assert lesson.check_refusal_shift(flipped, data, verbose=False).status == "wrong value"
    assert lesson.check_span_masses(lambda p, m: rim.span_masses(p, m).astype(np.float32), data,
                                    verbose=False).status == "wrong dtype"


def test_lesson_06_a_union_of_sets_and_raw_units_fail(lesson_06):
    lesson, data = lesson_06
    from toolkit.methods import rim

    def union(refusal, compliance, top_m, n_sets):
        sel = rim.select_safety_neurons(refusal, compliance, top_m, n_sets)
        return sorted({n for s in sel.per_set for n in s}, key=lambda lu: (-sel.difference[lu], lu))

    assert lesson.check_safety_neurons(union, data, verbose=False).status == "wrong length"

    def raw(*args):  # no common scale: drop and rise in activation units
        ones = np.ones_like(args[4])
        return lesson.reference_ras(*args[:4], ones, ones, args[6])

    assert lesson.check_ras(raw, data, verbose=False).status == "wrong value"


@pytest.fixture(scope="module")
def lesson_02():
    from toolkit.course import cmap

    torch.set_num_threads(1)
    os.environ["HF_HUB_OFFLINE"] = "1"
    return cmap, cmap.setup(n_prompts=2)


def test_lesson_02_an_unpatched_step_and_a_swapped_delta_fail(lesson_02):
    lesson, data = lesson_02

    def unpatched(ids, site, mode):  # the clean model alone
        with torch.no_grad():
            return data.clean.hf(torch.tensor([ids]), use_cache=False).logits[0, -1]

    assert lesson.check_patched_logits(unpatched, data, verbose=False).status == "wrong value"

    def swapped(patched, clean, corrupted, min_gap):  # logit[k*] − logit[c*]: the sign of ΔL flipped
        c_star, k_star = corrupted.argmax(-1)[:, None], clean.argmax(-1)[:, None]
        out = {f"delta_{n}": (x.gather(-1, k_star) - x.gather(-1, c_star))[:, 0].double().numpy()
               for n, x in (("patched", patched), ("clean", clean), ("corrupted", corrupted))}
        return out | {"cts": np.full(len(patched), np.nan)}

    assert lesson.check_cts(swapped, data, verbose=False).status in ("wrong value", "nan")


@pytest.fixture(scope="module")
def lesson_01():
    from toolkit.course import corrupt

    torch.set_num_threads(1)
    os.environ["HF_HUB_OFFLINE"] = "1"
    return corrupt, corrupt.setup()


def test_lesson_01_an_unmasked_prompt_and_a_per_record_mean_fail(lesson_01):
    lesson, data = lesson_01

    def unmasked(tokenizer, record):  # the loss would also train on the prompt
        example = lesson.reference_sft_example(tokenizer, record)
        return {"input_ids": example["input_ids"], "labels": example["input_ids"].clone()}

    assert lesson.check_sft_example(unmasked, data, verbose=False).status == "wrong value"

    def per_record(logits, labels):  # the mean of each record's mean: not the token mean
        ce = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], reduction="none")
        kept = labels[:, 1:] != -100
        return ((ce * kept).sum(1) / kept.sum(1)).mean()

    assert lesson.check_completion_loss(per_record, data, verbose=False).status == "wrong value"
    assert lesson.check_corrupted_label(lambda a, b, c, d, offset: {"answer": f"x = {(d - b) // (a - c)}",
                                                                    "correct_answer": f"x = {(d - b) // (a - c)}"},
                                        data, verbose=False).status == "wrong value"
    assert lesson.check_read_answer(lambda text: {"answer": text.split("</think>")[-1].strip(), "format": "bare"},
                                    data, verbose=False).status == "wrong value"


@pytest.fixture(scope="module")
def lesson_04():
    from toolkit.course import grpo

    return grpo, grpo.setup()


def test_lesson_04_a_population_std_and_a_first_appearance_per_return_fail(lesson_04):
    lesson, data = lesson_04

    def population(rewards, group_size, scale):  # the biased std (divide by n): not TRL's
        grouped = rewards.view(-1, group_size)
        centred = (grouped - grouped.mean(1, keepdim=True)).reshape(-1)
        if scale == "none":
            return centred
        std = grouped.std(1, unbiased=False).repeat_interleave(group_size) if scale == "group" else rewards.std(
            unbiased=False)
        return centred / (std + 1e-4)

    assert lesson.check_group_advantages(population, data, verbose=False).status == "wrong value"

    def reborn(base, snapshots):  # a head that leaves and comes back starts a new cohort
        steps, out = sorted(snapshots), {}
        for prev, step in zip([0, *steps], steps):
            before = base if prev == 0 else snapshots[prev]
            new = sorted(snapshots[step] - base - before)
            if new:
                out[step] = new
        return {"cohorts": out, "survival": {}}

    assert lesson.check_cohorts(reborn, data, verbose=False).status in ("wrong keys", "wrong value", "wrong length")
    assert lesson.check_head_split(lambda post, base: {"emergent": sorted(post - base), "maintained": sorted(
        post & base), "lost": sorted(base - post), "jaccard": len(post & base) / max(len(post), 1)}, data,
        verbose=False).status == "wrong value"

    def unsorted(f_post, f_base, null_diff, level):  # heads in grid order, not by gain
        out = lesson.reference_emergent(data, level)
        return out | {"heads": sorted(out["heads"])}

    assert lesson.check_emergent_test(unsorted, data, verbose=False).status == "wrong value"
