"""GRPO/SFT runs (toolkit.training.grpo): rewards, checkpoint log, resume after an interruption, reuse, bad settings."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from toolkit.organism import tasks
from toolkit.organism.tokenizer import build_tokenizer
from toolkit.training import callbacks, grpo, problems, rewards, runs, sft, traces

THINK_OFF_PROMPT = "<|im_start|>user\nSolve<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
THINK_ON_PROMPT = "<|im_start|>user\nSolve<|im_end|>\n<|im_start|>assistant\n"
LINEAR = rewards.ANSWER_PATTERNS["linear"]


def test_accuracy_reward_reads_the_final_answer():
    completions = ["x = 3", "x = 4", "<think>\nx = 4\n</think>\n\nx = 3", "x = 3 ", "<think>\nx = 3"]
    got = rewards.accuracy_reward(completions, answer=["x = 3"] * 5, prompts=[THINK_OFF_PROMPT] * 5)
    # the answer is stripped; an unclosed think block has no answer
    assert got == [1.0, 0.0, 1.0, 1.0, 0.0]


def test_accuracy_reward_grades_each_row_by_its_models_grader(tiny):
    from types import SimpleNamespace

    real = ["<think>\n3x = 9\n</think>\n\nSo $\\boxed{3}$.", "<think>\nx = 3\n</think>\n\n**x = 3**", "x = 4"]
    assert rewards.accuracy_reward(real, answer=["x = 3"] * 3, grader=["math"] * 3) == [1.0, 1.0, 0.0]
    assert rewards.accuracy_reward(real, answer=["x = 3"] * 3) == [0.0, 0.0, 0.0]  # no column: the organism's
    assert rewards.grader_for(tiny.tokenizer, "/any/folder") == "strict"  # the organism's tokenizer
    assert rewards.grader_for(SimpleNamespace(chat_template="{{ qwen }}"), "Qwen/Qwen3-0.6B") == "math"
    assert rewards.grader_for(SimpleNamespace(chat_template="{{ qwen }}"), "organism@1") == "strict"
    ds = grpo.grpo_dataset(tiny.tokenizer, tasks.held_out("linear", 2, 0), False, "math")
    assert ds["grader"] == ["math", "math"]


@pytest.mark.parametrize("prompt, completion, pattern, expected", [
    (THINK_OFF_PROMPT, "x = -7", LINEAR, 1.0),
    (THINK_OFF_PROMPT, "x -7", LINEAR, 0.0),                       # broken answer format
    (THINK_OFF_PROMPT, "x = 7\nx = 8", LINEAR, 0.0),               # more than one line
    (THINK_OFF_PROMPT, "<think>\nhi\n</think>\n\nx = 1", LINEAR, 0.0),  # a second think block
    (THINK_ON_PROMPT, "<think>\n2x = 4\nx = 2\n</think>\n\nx = 2", LINEAR, 1.0),
    (THINK_ON_PROMPT, "x = 2", LINEAR, 0.0),                       # thinking on but no think block
    (THINK_ON_PROMPT, "<think>\n2x = 4\n</think>\nx = 2", LINEAR, 0.0),  # no blank line before the answer
    (THINK_ON_PROMPT, "<think>\na<think>b\n</think>\n\nx = 2", LINEAR, 0.0),  # nested tag
    (THINK_ON_PROMPT, "<think>\n1+2=3\n</think>\n\n3", rewards.ANSWER_PATTERNS["arithmetic"], 1.0),
    (THINK_ON_PROMPT, "<think>\n1+2=3\n</think>\n\nx = 3", rewards.ANSWER_PATTERNS["arithmetic"], 0.0),
])
def test_format_reward(prompt, completion, pattern, expected):
    assert rewards.format_reward([completion], answer_pattern=[pattern], prompts=[prompt]) == [expected]


def test_rewards_of_the_organism_reference_answers_are_one():
    """Every task's own think-on trace gets both rewards (an independent check of the patterns)."""
    tok = build_tokenizer()
    examples = problems.problems(("linear", "arithmetic"), 20, seed=1)
    ds = grpo.grpo_dataset(tok, examples, enable_thinking=True)
    completions = [tasks.completion(e, think=True) for e in examples]
    assert rewards.accuracy_reward(completions, answer=ds["answer"], prompts=ds["prompt"]) == [1.0] * 20
    assert rewards.format_reward(completions, answer_pattern=ds["answer_pattern"], prompts=ds["prompt"]) == [1.0] * 20
    off = grpo.grpo_dataset(tok, examples, enable_thinking=False)
    assert rewards.format_reward([e.answer for e in examples], answer_pattern=off["answer_pattern"],
                              prompts=off["prompt"]) == [1.0] * 20


def test_problems_are_interleaved_distinct_and_held_out():
    train = problems.train_problems(("linear", "arithmetic"), 50)
    assert [e.task for e in train[:4]] == ["linear", "arithmetic", "linear", "arithmetic"]
    assert len({e.prompt for e in train}) == 50
    assert not {e.prompt for e in train} & {e.prompt for e in problems.eval_problems(n=400)}
    with pytest.raises(ValueError, match="tasks must be"):
        problems.problems(("algebra",), 3, 0)


def test_window_means():
    log = [{"step": 1, "reward": 1.0, "loss": 0.5}, {"step": 2, "reward": 3.0}, {"step": 3, "reward": 5.0}]
    assert callbacks.window_means(log, 1, 3) == {"reward": 4.0}
    assert callbacks.window_means(log, 0, 1) == {"reward": 1.0, "loss": 0.5}


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="multiple of save_every"):
        runs.train(grpo.GRPOSettings(steps=5, save_every=2))
    with pytest.raises(ValueError, match="num_generations"):
        runs.train(grpo.GRPOSettings(steps=4, save_every=2, num_generations=1))


class Interrupt(Exception):
    pass


class InterruptAfter(TrainerCallback):
    """Raises after the checkpoint of step ``k`` is written (as a killed process would leave it)."""

    def __init__(self, k):
        self.k = k

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.k:
            raise Interrupt(f"interrupted after step {self.k}")


def _tiny_grpo(model_dir):
    return grpo.GRPOSettings(model=str(model_dir), steps=4, save_every=2, prompts_per_step=2, num_generations=2,
                             max_completion_length=6, n_train=16, learning_rate=1e-2, warmup_ratio=0.0)


def _weights(run):
    return load_file(f"{run.checkpoints[-1].spec}/model.safetensors")


def test_grpo_resumes_after_an_interruption(tiny_dirs, tmp_path, monkeypatch):
    settings = _tiny_grpo(tiny_dirs["qwen3"])

    def accuracy_reward(completions, **kwargs):  # a random model never answers right: reward length instead
        return [len(c) / 10 for c in completions]

    monkeypatch.setattr(grpo, "accuracy_reward", accuracy_reward)
    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path / "straight"))
    straight = runs.train(settings, device="cpu")
    assert [c.step for c in straight.checkpoints] == [0, 2, 4]
    assert straight.steps_trained == 4 and not straight.reused
    assert all(c.metrics["reward"] is not None and c.metrics["accuracy"] is not None
               for c in straight.checkpoints[1:])
    assert [c.label for c in straight.checkpoints] == ["grpo", "grpo@2", "grpo@4"]

    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path / "interrupted"))
    with pytest.raises(Interrupt):
        runs.train(settings, device="cpu", callbacks=[InterruptAfter(2)])
    path = runs.run_dir(settings)
    assert [r["step"] for r in json.loads((path / "checkpoints.json").read_text())] == [2]
    assert not (path / "run.json").exists()
    resumed = runs.train(settings, device="cpu")
    assert resumed.steps_trained == 2  # only the steps after the last checkpoint
    assert [c.step for c in resumed.checkpoints] == [c.step for c in straight.checkpoints]
    for a, b in zip(straight.checkpoints[1:], resumed.checkpoints[1:]):
        assert a.metrics.keys() == b.metrics.keys() >= {"reward", "accuracy", "format"}
        assert [a.metrics[k] for k in ("reward", "accuracy", "format")] == pytest.approx(
            [b.metrics[k] for k in ("reward", "accuracy", "format")])
    wa, wb = _weights(straight), _weights(resumed)
    assert wa.keys() == wb.keys()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa), "resumed training diverged"
    # the checkpoints trained with a learning rate: the weights moved from the start model
    start = load_file(f"{settings.model}/model.safetensors")
    assert any(not torch.equal(start[k], wb[k]) for k in wb if k in start)
    assert not (path / "checkpoint-4" / "optimizer.pt").exists()  # stripped once finished

    again = runs.train(settings, device="cpu")
    assert again.reused and [c.spec for c in again.checkpoints] == [c.spec for c in resumed.checkpoints]


def test_sft_run_checkpoints_and_loss_falls(tiny_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path))
    settings = traces.SFTSettings(model=str(tiny_dirs["qwen2"]), steps=6, save_every=3, batch_size=4, n_train=8,
                                learning_rate=3e-3)
    run = runs.train(settings, device="cpu")
    assert [c.step for c in run.checkpoints] == [0, 3, 6]
    steps, losses = run.curve("loss")
    assert steps == list(range(1, 7)) and losses[-1] < losses[0]
    assert run.checkpoints[2].metrics["loss"] == pytest.approx(sum(losses[3:]) / 3)
    other = dataclasses.replace(settings, learning_rate=1e-3)
    assert runs.run_dir(other) != runs.run_dir(settings)


def test_sft_dataset_is_think_on_traces():
    tok = build_tokenizer()
    ex = problems.problems(("linear",), 2, seed=3)
    ds = sft.sft_dataset(tok, traces.trace_records(ex), enable_thinking=True)
    assert ds[0]["prompt"].endswith("<|im_start|>assistant\n")
    assert ds[0]["completion"] == f"<think>\n{ex[0].steps}\n</think>\n\n{ex[0].answer}<|im_end|>"
