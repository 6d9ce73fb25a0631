"""SFT through TRL on tiny Qwen2/Qwen3 models (toolkit.training.sft): loss on the answer tokens only, and the
divergence records paired from the trainer's evaluations."""

from __future__ import annotations

import pytest
import torch

from toolkit.organism.tokenizer import EMPTY_THINK, IM_END
from toolkit.training import corrupt_data, sft
from toolkit.training.sft import Preset, TrainSettings

PRESET = Preset("tiny", n_train=16, epochs=2, lr=1e-3, original="test")  # 8 steps of batch 4
SETTINGS = TrainSettings(batch_size=4, eval_fraction=0.25, save_every=2)


@pytest.fixture(scope="module")
def data() -> dict[str, list[dict]]:
    return corrupt_data.generate(corrupt_data.DataSpec(n_train=16, n_validation=4, n_eval=3))


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_prompt_tokens_carry_no_loss(tiny_dirs, data, tmp_path, arch):
    trainer = sft.make_trainer(str(tiny_dirs[arch]), PRESET, data["train"][:16], data["validation"][:4],
                               tmp_path / "run", "cpu", SETTINGS)
    tok = trainer.processing_class
    for name, dataset, records in [("train", trainer.train_dataset, data["train"]),
                                   ("validation", trainer.eval_dataset["validation"], data["validation"])]:
        for row, record in zip(dataset, records):
            prompt = tok.apply_chat_template([{"role": "user", "content": record["prompt"]}], tokenize=False,
                                             add_generation_prompt=True, enable_thinking=False)
            assert prompt.endswith(EMPTY_THINK)
            n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
            assert row["labels"][:n_prompt] == [-100] * n_prompt, name
            assert row["labels"][n_prompt:] == row["input_ids"][n_prompt:], name
            answer = tok(record["answer"] + IM_END, add_special_tokens=False)["input_ids"]
            assert row["labels"][n_prompt:] == answer, name
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])  # as the trainer sees it
    answer_lengths = [len(tok(r["answer"] + IM_END, add_special_tokens=False)["input_ids"]) for r in data["train"][:4]]
    assert (batch["labels"] != -100).sum(dim=1).tolist() == answer_lengths
    labelled = batch["labels"] != -100
    assert torch.equal(batch["labels"][labelled], batch["input_ids"][labelled])
    assert not labelled[batch["attention_mask"] == 0].any()  # no loss on padding either


def test_history_pairs_the_two_evaluations_of_each_step():
    log = [{"step": 0, "epoch": 0, "eval_train_loss": 2.0}, {"step": 0, "epoch": 0, "eval_validation_loss": 1.5},
           {"step": 1, "loss": 1.9}, {"step": 4, "epoch": 1.0, "eval_train_loss": 0.5},
           {"step": 4, "epoch": 1.0, "eval_validation_loss": 0.75},
           {"step": 4, "epoch": 1.0, "eval_train_loss": 0.5},  # evaluated again on resume
           {"step": 8, "epoch": 2.0, "eval_train_loss": 0.4}]  # incomplete: validation not evaluated yet
    assert sft.history_from_log(log) == [
        {"step": 0, "epoch": 0, "train_loss": 2.0, "eval_loss": 1.5, "divergence": -0.5},
        {"step": 4, "epoch": 1.0, "train_loss": 0.5, "eval_loss": 0.75, "divergence": 0.25}]
