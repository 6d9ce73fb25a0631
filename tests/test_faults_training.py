"""Fault injection for training runs, caches, locks and pickle (issue 15): every case either recovers or stops with a
clear error, and no finished result is lost.

- a process killed with SIGKILL in the middle of a checkpoint save, and checkpoints left truncated or half written:
  the run resumes from the last complete checkpoint, with a warning naming the one it removed;
- ``retrain=True`` clears an unfinished run; a resumed fine-tune's history has no extra evaluation;
- damaged run records and cache entries are reported with their path, removed and computed again;
- locks: two processes started together never both hold one; stale, empty and garbage lock files are taken over;
  a second training run with the same configuration waits and reuses the first one's result;
- no pickle: a planted pickle in the organism build folder is never loaded, and the toolkit's source has no unsafe
  ``torch.load`` and no pickle import.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from toolkit.core import cache
from toolkit.core.io import recover_dir, replace_dir
from toolkit.core.locks import FileLock, LockError
from toolkit.training import corrupt, corrupt_data, grpo, runs, traces
from toolkit.training.checkpoints import checkpoint_problem, last_good_checkpoint
from toolkit.training.sft import Preset, TrainSettings

REPO = Path(__file__).resolve().parents[1]
PRESET = Preset("tiny", n_train=16, epochs=2, lr=1e-3, original="test")  # 8 steps of batch 4
SETTINGS = TrainSettings(batch_size=4, eval_fraction=0.25, save_every=2)  # evaluations at 0, 2, 4, 6, 8


@pytest.fixture(scope="module")
def data() -> dict[str, list[dict]]:
    return corrupt_data.generate(corrupt_data.DataSpec(n_train=16, n_validation=4, n_eval=3))


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def straight(tiny_dirs, data, tmp_path_factory):
    """An uninterrupted fine-tune: what every recovered run must end with."""
    os.environ["TOOLKIT_CACHE"] = str(tmp_path_factory.mktemp("straight"))
    try:
        return corrupt.finetune(str(tiny_dirs["qwen3"]), PRESET, data, "full", "cpu", SETTINGS)
    finally:
        del os.environ["TOOLKIT_CACHE"]


class StopAfterSave(TrainerCallback):
    def __init__(self, at: int):
        self.at = at

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise KeyboardInterrupt(f"stopped after the checkpoint of step {self.at}")


def _same_as(run, reference) -> None:
    assert [r["step"] for r in run.history] == [r["step"] for r in reference.history] == [0, 2, 4, 6, 8]
    a, b = load_file(str(run.path / "model.safetensors")), load_file(str(reference.path / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), "the recovered run ended with other weights"


def _work_dir(cache_dir: Path, name: str) -> Path:
    (work,) = (cache_dir / "corrupted-runs").glob(f"{name}-*")
    return work


KILL_DURING_SAVE = """
import os, signal, sys
from transformers import Trainer
from toolkit.training import corrupt
from toolkit.training import corrupt_data
from toolkit.training.sft import Preset, TrainSettings

real = Trainer._save_optimizer_and_scheduler
def killed(self, output_dir):
    if self.state.global_step == 4:  # the weights of checkpoint-4 are written, the rest is not
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, output_dir)
Trainer._save_optimizer_and_scheduler = killed
data = corrupt_data.generate(corrupt_data.DataSpec(n_train=16, n_validation=4, n_eval=3))
corrupt.finetune(sys.argv[1], Preset("tiny", 16, 2, 1e-3, "test"),
                 data, "killed", "cpu", TrainSettings(batch_size=4, eval_fraction=0.25, save_every=2))
"""


def test_kill_9_during_a_checkpoint_save_resumes_from_the_last_complete_one(tiny_dirs, data, cache_dir, straight):
    env = {**os.environ, "TOOLKIT_CACHE": str(cache_dir), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, str(tiny_dirs["qwen3"])], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    work = _work_dir(cache_dir, "killed")
    assert checkpoint_problem(work / "checkpoint-4") is not None  # what the kill left: weights, no trainer state
    assert (cache_dir / "corrupted" / "killed.lock").exists()  # and the dead process's lock
    with pytest.warns(UserWarning, match=r"checkpoint-4 is incomplete \(.*missing"):
        run = corrupt.finetune(str(tiny_dirs["qwen3"]), PRESET, data, "killed", "cpu", SETTINGS)
    meta = json.loads((run.path / "finetune.json").read_text())
    assert meta["resumed_from"].endswith("checkpoint-2")
    _same_as(run, straight)


def _truncate_weights(ckpt: Path) -> None:
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])


DAMAGE = {
    "truncated weights": _truncate_weights,
    "no optimizer state": lambda ckpt: (ckpt / "optimizer.pt").unlink(),
    "no trainer state": lambda ckpt: (ckpt / "trainer_state.json").unlink(),
    "half-written trainer state": lambda ckpt: (ckpt / "trainer_state.json").write_text('{"global_st'),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_last_checkpoint_is_skipped_with_a_warning(damage, tiny_dirs, data, cache_dir, straight):
    spec = str(tiny_dirs["qwen3"])
    with pytest.raises(KeyboardInterrupt):
        corrupt.finetune(spec, PRESET, data, "damaged", "cpu", SETTINGS, callbacks=[StopAfterSave(4)])
    work = _work_dir(cache_dir, "damaged")
    DAMAGE[damage](work / "checkpoint-4")
    with pytest.warns(UserWarning, match="checkpoint-4 is incomplete"):
        assert last_good_checkpoint(work).endswith("checkpoint-2")
    assert not (work / "checkpoint-4").exists()
    run = corrupt.finetune(spec, PRESET, data, "damaged", "cpu", SETTINGS)
    assert json.loads((run.path / "finetune.json").read_text())["resumed_from"].endswith("checkpoint-2")
    _same_as(run, straight)


def test_retrain_clears_an_unfinished_fine_tune(tiny_dirs, data, cache_dir, straight):
    spec = str(tiny_dirs["qwen3"])
    with pytest.raises(KeyboardInterrupt):
        corrupt.finetune(spec, PRESET, data, "again", "cpu", SETTINGS, callbacks=[StopAfterSave(4)])
    run = corrupt.finetune(spec, PRESET, data, "again", "cpu", SETTINGS, retrain=True)
    assert json.loads((run.path / "finetune.json").read_text())["resumed_from"] is None
    _same_as(run, straight)


def test_a_resumed_fine_tune_has_no_extra_evaluation(tiny_dirs, data, cache_dir, straight):
    odd = TrainSettings(batch_size=4, eval_fraction=0.25, save_every=3)  # checkpoint 3 is not an evaluation step
    with pytest.raises(KeyboardInterrupt):
        corrupt.finetune(str(tiny_dirs["qwen3"]), PRESET, data, "odd", "cpu", odd, callbacks=[StopAfterSave(3)])
    run = corrupt.finetune(str(tiny_dirs["qwen3"]), PRESET, data, "odd", "cpu", odd)
    assert [r["step"] for r in run.history] == [0, 2, 4, 6, 8]


def test_a_damaged_fine_tune_record_or_model_is_trained_again(tiny_dirs, data, cache_dir):
    spec = str(tiny_dirs["qwen3"])
    first = corrupt.finetune(spec, PRESET, data, "rec", "cpu", SETTINGS)
    (first.path / "finetune.json").write_text('{"config_hash": ')
    with pytest.warns(UserWarning, match=r"damaged cache entry .*finetune\.json"):
        again = corrupt.finetune(spec, PRESET, data, "rec", "cpu", SETTINGS)
    assert not again.reused and again.history == first.history
    _truncate_weights(again.path)
    with pytest.warns(UserWarning, match="model.safetensors does not open"):
        third = corrupt.finetune(spec, PRESET, data, "rec", "cpu", SETTINGS)
    assert not third.reused and load_file(str(third.path / "model.safetensors"))


def _tiny_grpo(model_dir):
    return grpo.GRPOSettings(model=str(model_dir), steps=4, save_every=2, prompts_per_step=2, num_generations=2,
                             max_completion_length=6, n_train=16, learning_rate=1e-2, warmup_ratio=0.0)


def test_a_damaged_grpo_run_record_is_reported_and_the_run_trained_again(tiny_dirs, cache_dir):
    settings = _tiny_grpo(tiny_dirs["qwen2"])
    first = runs.train(settings, device="cpu")
    path = runs.run_dir(settings)
    (path / "run.json").write_text("{")
    with pytest.warns(UserWarning, match=r"damaged cache entry .*run\.json"):
        again = runs.train(settings, device="cpu")
    assert not again.reused and [c.step for c in again.checkpoints] == [0, 2, 4]
    assert again.steps_trained == 4  # the finished checkpoints had no optimizer state left: trained from the start
    _truncate_weights(path / "checkpoint-2")
    with pytest.warns(UserWarning, match="checkpoint-2: model.safetensors does not open"):
        third = runs.train(settings, device="cpu")
    assert not third.reused and runs.train(settings, device="cpu").reused
    wa, wb = load_file(f"{first.checkpoints[-1].spec}/model.safetensors"), \
        load_file(f"{third.checkpoints[-1].spec}/model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_damaged_cache_entries_are_reported_removed_and_computed_again(tmp_path):
    good = tmp_path / "good.json"
    good.write_text('{"accuracy": 0.5}')
    assert cache.read_entry(good, lambda p: cache.read_json(p, ("accuracy",))) == {"accuracy": 0.5}
    assert cache.read_entry(tmp_path / "missing.json") is None
    for text in ('{"accuracy": 0.', '{"other": 1}', "[1, 2]", ""):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.warns(UserWarning, match=f"damaged cache entry {re.escape(str(bad))}"):
            assert cache.read_entry(bad, lambda p: cache.read_json(p, ("accuracy",))) is None
        assert not bad.exists()


def test_a_truncated_circuit_snapshot_and_accuracy_cache_are_recomputed(tiny, tmp_path, monkeypatch):
    from toolkit.methods import eap
    from toolkit.organism import tasks
    from toolkit.studies import grpo_dynamics

    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path))
    examples = tasks.held_out("linear", 2, seed=5)
    first = grpo_dynamics.checkpoint_correct({0: tiny.spec}, examples, device="cpu")[0].tolist()
    (entry,) = (tmp_path / "circuits" / "accuracy").glob("*.json")
    entry.write_text('{"spec": "x", "accur')
    with pytest.warns(UserWarning, match="damaged cache entry"):
        assert grpo_dynamics.checkpoint_correct({0: tiny.spec}, examples, device="cpu")[0].tolist() == first
    scores = tmp_path / "s.scores.json"
    scores.write_text('{"format": "toolkit.eap.Scores/1", "graph": {')
    with pytest.warns(UserWarning, match="cannot read scores"):
        assert cache.read_entry(scores, eap.Scores.load) is None


def test_a_swap_killed_between_its_renames_is_finished_on_read(tmp_path):
    path = tmp_path / "model"
    (tmp_path / "model.old").mkdir()
    (tmp_path / "model.old" / "config.json").write_text("{}")
    assert (recover_dir(path) / "config.json").exists()  # the old folder is back under its name
    new = tmp_path / "model.tmp"
    new.mkdir()
    (new / "config.json").write_text('{"new": 1}')
    replace_dir(new, path)
    assert json.loads((path / "config.json").read_text()) == {"new": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


# ---- locks ------------------------------------------------------------------------------------------------------

def _try_lock(path, barrier, results):
    barrier.wait()
    try:
        with FileLock(path):
            results.put("got")
            time.sleep(0.15)
    except LockError:
        results.put("refused")


def test_two_processes_started_together_never_both_hold_the_lock(tmp_path):
    ctx = mp.get_context("fork")
    for trial in range(20):
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_try_lock, args=(tmp_path / f"{trial}.lock", barrier, results)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(10)
        assert sorted(results.get(timeout=5) for _ in procs) == ["got", "refused"], f"trial {trial}"


def _hold(path, ready, release):
    with FileLock(path, what="holding it for a test"):
        ready.set()
        release.wait(10)


def test_a_live_holder_is_named_and_a_waiting_run_gets_the_lock_after_it(tmp_path):
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(tmp_path / "x.lock", ready, release))
    holder.start()
    assert ready.wait(10)
    with pytest.raises(LockError, match=f"pid {holder.pid} holding it for a test"):
        FileLock(tmp_path / "x.lock").acquire()
    threading.Timer(0.3, release.set).start()
    with FileLock(tmp_path / "x.lock", wait=True):  # blocks until the holder lets go
        assert not holder.is_alive() or release.is_set()
    holder.join(10)


@pytest.mark.parametrize("content,message", [("pid 999999999 training into x", "left by pid 999999999"),
                                             ("", "empty lock file"), ("\x00\xff garbage", "left by")])
def test_stale_empty_and_garbage_locks_are_taken_over_with_a_message(tmp_path, capsys, content, message):
    lock = tmp_path / "x.lock"
    lock.write_text(content)
    os.utime(lock, (time.time() - 60, time.time() - 60))  # left over from a minute ago
    with FileLock(lock):
        assert lock.read_text().startswith(f"pid {os.getpid()}")
    assert message in capsys.readouterr().out
    assert not lock.exists()


def test_a_training_run_with_the_same_configuration_waits_and_reuses(tiny_dirs, data, cache_dir):
    spec, results = str(tiny_dirs["qwen2"]), {}

    def train(name):
        results[name] = corrupt.finetune(spec, PRESET, data, "shared", "cpu", SETTINGS)

    threads = [threading.Thread(target=train, args=(k,)) for k in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert sorted(run.reused for run in results.values()) == [False, True]
    assert results["a"].history == results["b"].history


def test_an_organism_build_refuses_while_another_holds_its_lock(tmp_path):
    from toolkit.organism.build import build
    from toolkit.organism.recipe import QUICK, Recipe

    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    work = tmp_path / "work"
    work.mkdir()
    holder = ctx.Process(target=_hold, args=(work / "build.lock", ready, release))
    holder.start()
    assert ready.wait(10)
    try:
        with pytest.raises(LockError, match=f"pid {holder.pid}"):
            build(tmp_path / "out", Recipe(**QUICK), work, evaluate=lambda *a: {})
    finally:
        release.set()
        holder.join(10)


# ---- pickle -----------------------------------------------------------------------------------------------------

class _Planted:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_planted_pickle_in_the_build_folder_is_never_loaded(tmp_path):
    from transformers import Qwen3ForCausalLM

    from toolkit.organism.build import train_stage
    from toolkit.organism.recipe import QUICK, Recipe
    from toolkit.organism.tokenizer import build_tokenizer

    marker = tmp_path / "pwned"
    work = tmp_path / "work"
    work.mkdir()
    torch.save({"model": _Planted(marker)}, work / "s.pt")  # the old checkpoint name of stage "s"
    recipe = Recipe(**{**QUICK, "d_model": 32, "d_mlp": 64, "head_dim": 8, "n_layers": 2, "checkpoint_every": 2})
    torch.manual_seed(0)
    train_stage(Qwen3ForCausalLM(recipe.model_config()), build_tokenizer(), recipe, 3, 0.5, set(), work, "s", seed=1)
    assert not marker.exists()
    assert (work / "s" / "model.safetensors").exists() and (work / "s" / "state.json").exists()


UNSAFE = [
    (re.compile(r"torch\.load\((?![^)]*weights_only\s*=\s*True)"), "torch.load without weights_only=True"),
    (re.compile(r"^\s*(import|from)\s+(c?pickle|dill|cloudpickle|joblib)\b", re.M), "a pickle import"),
    (re.compile(r"allow_pickle\s*=\s*True"), "numpy allow_pickle=True"),
    (re.compile(r"trust_remote_code\s*=\s*True"), "trust_remote_code=True"),
]


def test_the_toolkit_never_unpickles():
    found = [f"{path.relative_to(REPO)}: {what}" for path in sorted((REPO / "toolkit").rglob("*.py"))
             for pattern, what in UNSAFE if pattern.search(path.read_text())]
    assert not found, "\n".join(found)
    assert UNSAFE[0][0].search("x = torch.load(f, weights_only=False)")  # the scan can fail
    assert not UNSAFE[0][0].search("x = torch.load(f, map_location='cpu', weights_only=True)")


@pytest.mark.parametrize("make,field", [
    (lambda: grpo.GRPOSettings(learning_rate=-1e-3), "learning_rate must be > 0"),
    (lambda: grpo.GRPOSettings(learning_rate=float("nan")), "learning_rate must be a number"),
    (lambda: grpo.GRPOSettings(temperature=0.0), "temperature must be > 0"),
    (lambda: grpo.GRPOSettings(num_generations=1), "num_generations must be ≥ 2"),
    (lambda: grpo.GRPOSettings(steps=True), "steps must be an integer"),
    (lambda: grpo.GRPOSettings(steps=10, save_every=3), "multiple of save_every"),
    (lambda: traces.SFTSettings(batch_size=0), "batch_size must be ≥ 1"),
    (lambda: traces.SFTSettings(warmup_ratio=1.5), "warmup_ratio must be ≥ 0 and ≤ 1"),
    (lambda: TrainSettings(batch_size=2.5), "batch_size must be an integer"),
    (lambda: TrainSettings(eval_fraction=0), "eval_fraction must be > 0 and ≤ 1"),
    (lambda: Preset("p", n_train=-5, epochs=1, lr=1e-3, original=""), "n_train must be ≥ 1"),
    (lambda: Preset("p", n_train=8, epochs=1, lr=0, original=""), "lr must be > 0"),
])
def test_training_settings_out_of_range_are_refused_when_made(make, field):
    with pytest.raises(ValueError, match=re.escape(field)):
        make()
