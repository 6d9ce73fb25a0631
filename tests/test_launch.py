"""Training as a launchable command (toolkit.training.launch): N processes agree with one, multi-process resume,
config-file bad inputs, the vLLM options reaching GRPOConfig, and distillation's teacher traces.

The multi-process tests start their own 2-process runs on 127.0.0.1 (a free port each; torchrun and accelerate
launch), with CPU processes over gloo, and kill the whole process group if one hangs.
"""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from toolkit.core import cache
from toolkit.run import cli
from toolkit.training import distill, grpo, launch, problems, runs, traces
from toolkit.training.checkpoints import checkpoint_problem

REPO = Path(__file__).resolve().parent.parent
CPU_2PROC = REPO / "configs" / "accelerate" / "cpu-2proc.yaml"
# 1 vs 2 processes: float32 sums in another order (per-process token sums, gloo's all-reduce, shorter padding) differ
# by ~1e-7 relative; AdamW divides by sqrt(v), which magnifies that for near-zero gradient entries. Measured after 6
# steps at lr 3e-3: 3.3e-6 (the weights moved by 1.8e-2). Another data order (seed 1) gives 3.1e-2, and a per-process
# token mean (average_tokens_across_devices=False) 2.9e-2, so the tolerance separates right from wrong by 1000x.
WEIGHTS_ATOL = 2e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_run(args: list[str], cache_dir: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``args`` (a launcher command) in its own process group with the test environment; kill the group on a
    timeout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOOLKIT_CACHE": str(cache_dir),
           "TRANSFORMERS_VERBOSITY": "error", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(args[:6])} … did not finish in {timeout} s:\n{out[-3000:]}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # nothing of the launch outlives the test
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(args, proc.returncode, out, "")


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), *args]


def write_config(path: Path, settings) -> Path:
    path.write_text(yaml.safe_dump({k: list(v) if isinstance(v, tuple) else v
                                    for k, v in dataclasses.asdict(settings).items()}))
    return path


def final_weights(run_path: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run_path / f"checkpoint-{step}" / "model.safetensors")


# ---- (a) SFT: 2 processes agree with 1 ----------------------------------------------------------------------------

def test_sft_with_two_processes_matches_one_process(tiny_dirs, tmp_path):
    settings = traces.SFTSettings(model=str(tiny_dirs["qwen2"]), steps=6, save_every=3, batch_size=4, n_train=16,
                                learning_rate=3e-3, warmup_ratio=0.0)  # 16 traces: two epochs, reshuffled
    config = write_config(tmp_path / "sft.yaml", settings)
    train = ["-m", "toolkit", "train", "sft", "--config", str(config), "--device", "cpu"]
    one = launch_run([sys.executable, *train], tmp_path / "one")
    assert one.returncode == 0, one.stdout[-3000:]
    two = launch_run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_2PROC),
                      "--main_process_port", str(free_port()), *train], tmp_path / "two")
    assert two.returncode == 0, two.stdout[-3000:]
    assert two.stdout.count("sft run in") == 1  # the summary comes from the main process only

    path_one = next((tmp_path / "one" / "grpo-runs").iterdir())
    path_two = next((tmp_path / "two" / "grpo-runs").iterdir())
    assert path_one.name == path_two.name == runs.run_dir(settings).name  # the cache key ignores the process count
    a, b = final_weights(path_one, 6), final_weights(path_two, 6)
    start = load_file(Path(settings.model) / "model.safetensors")
    assert max((a[k] - start[k]).abs().max().item() for k in start) > 1e-3  # training moved the weights
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff < WEIGHTS_ATOL, f"2 processes differ from 1 by {diff:.2e}"
    run_one, run_two = (json.loads((p / "run.json").read_text()) for p in (path_one, path_two))
    assert [r["step"] for r in run_two["checkpoints"]] == [3, 6] and run_two["steps_trained"] == 6
    assert [r["loss"] for r in run_two["checkpoints"]] == pytest.approx([r["loss"] for r in run_one["checkpoints"]],
                                                                        rel=1e-4)
    leftovers = [p.name for p in (path_two / "checkpoint-6").iterdir() if p.name.startswith(("rng_state", "optim"))]
    assert not leftovers, f"resume state not stripped: {leftovers}"


# ---- (b) GRPO: 2 processes, interrupted, resumed ------------------------------------------------------------------

GRPO_SCRIPT = '''
import json, sys
from accelerate import PartialState
from transformers import TrainerCallback
from toolkit.training import grpo, launch, runs

class Interrupt(Exception):
    pass

class InterruptAfter(TrainerCallback):
    def __init__(self, step):
        self.step = step
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            PartialState().wait_for_everyone()  # every process has written its part of the checkpoint
            raise Interrupt(f"interrupted after step {self.step}")

grpo.accuracy_reward = lambda completions, **kwargs: [len(c) / 10 for c in completions]  # a signal for a random model
settings = launch.settings_from_file(grpo.GRPOSettings, sys.argv[1])
stop = int(sys.argv[2])
run = runs.train(settings, device="cpu", callbacks=[InterruptAfter(stop)] if stop else [])
if PartialState().is_main_process:
    print("RESULT", json.dumps({"steps_trained": run.steps_trained, "path": str(run.path)}))
'''


def test_grpo_with_two_processes_resumes_after_an_interruption(tiny_dirs, tmp_path):
    settings = grpo.GRPOSettings(model=str(tiny_dirs["qwen3"]), steps=4, save_every=2, prompts_per_step=2,
                                 num_generations=2, max_completion_length=6, n_train=16, learning_rate=1e-2,
                                 warmup_ratio=0.0)
    config = write_config(tmp_path / "grpo.yaml", settings)
    script = tmp_path / "grpo_run.py"
    script.write_text(GRPO_SCRIPT)

    def result(out: str) -> dict:
        return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])

    straight = launch_run(torchrun(str(script), str(config), "0"), tmp_path / "straight")
    assert straight.returncode == 0, straight.stdout[-3000:]
    assert result(straight.stdout)["steps_trained"] == 4

    stopped = launch_run(torchrun(str(script), str(config), "2"), tmp_path / "resumed")
    assert stopped.returncode != 0 and "interrupted after step 2" in stopped.stdout
    path = tmp_path / "resumed" / "grpo-runs" / runs.run_dir(settings).name
    assert [r["step"] for r in json.loads((path / "checkpoints.json").read_text())] == [2]
    assert not (path / "run.json").exists()
    assert checkpoint_problem(path / "checkpoint-2") is None
    assert {p.name for p in (path / "checkpoint-2").glob("rng_state*")} == {"rng_state_0.pth", "rng_state_1.pth"}

    resumed = launch_run(torchrun(str(script), str(config), "0"), tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert result(resumed.stdout)["steps_trained"] == 2  # only the steps after the checkpoint
    log = json.loads((path / "run.json").read_text())
    assert [r["step"] for r in log["checkpoints"]] == [2, 4]
    a, b = final_weights(Path(result(straight.stdout)["path"]), 4), final_weights(path, 4)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5, "the resumed run diverged from the straight one"
    assert not [p.name for p in (path / "checkpoint-4").iterdir() if p.name.startswith(("rng_state", "optim"))]


def test_a_process_count_that_does_not_divide_the_batch_is_refused_before_training(tiny_dirs, tmp_path):
    settings = traces.SFTSettings(model=str(tiny_dirs["qwen2"]), steps=2, save_every=2, batch_size=3, n_train=6)
    config = write_config(tmp_path / "sft.yaml", settings)
    out = launch_run(torchrun("-m", "toolkit", "train", "sft", "--config", str(config), "--device", "cpu"), tmp_path)
    assert out.returncode != 0
    assert "global batch (batch_size = 3) is not divisible by the 2 processes" in out.stdout
    assert "launch 1, 3 processes" in out.stdout
    assert not (tmp_path / "grpo-runs").exists()  # nothing was trained, not even a lock taken
    with pytest.raises(launch.LaunchError, match=r"prompts_per_step × num_generations = 3 × 2\) is not divisible"):
        launch.per_device_batch(grpo.GRPOSettings(prompts_per_step=3, num_generations=2), 4)
    assert launch.per_device_batch(grpo.GRPOSettings(prompts_per_step=3, num_generations=2), 3) == 2


# ---- (c) config files ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, text, message", [
    ("missing.yaml", None, "not found"),
    ("bad.json", '{"steps": 4,}', "not valid JSON: .* at line 1"),
    ("bad.yaml", "steps: [4\nbatch_size: 2\n", "not valid YAML at line"),
    ("list.yaml", "- steps\n", "must hold a mapping of settings"),
    ("settings.toml", "steps = 4", "unknown format '.toml'"),
    ("typo.yaml", "stepz: 4\n", r"unknown field 'stepz' \(did you mean 'steps'\?\) for SFTSettings; valid fields: "
                                r"model, tasks, steps"),
    ("type.yaml", "steps: four\n", "steps must be an integer, got 'four'"),
    ("bool.yaml", "steps: true\n", "steps must be an integer, got True"),
    ("tasks.yaml", "tasks: linear\n", "tasks must be a list of strings"),
    ("range.yaml", "learning_rate: -1\n", "SFTSettings.learning_rate must be > 0, got -1.0"),
    ("multiple.yaml", "steps: 5\nsave_every: 2\n", r"steps \(5\) must be a multiple of save_every \(2\)"),
])
def test_bad_config_files_are_refused_with_the_reason(tmp_path, capsys, name, text, message):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(launch.ConfigError, match=message) as err:
        launch.settings_from_file(traces.SFTSettings, path)
    assert str(path) in str(err.value)
    assert cli.main(["train", "sft", "--config", str(path)]) == 2  # the command says why and exits 2
    assert f"error: config file {path}" in capsys.readouterr().err


def test_config_values_are_typed_as_the_settings(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("tasks: [linear]\nlearning_rate: 1e-3\nwarmup_ratio: 0\nsteps: 10\nsave_every: 5\n")
    settings = launch.settings_from_file(traces.SFTSettings, path)  # PyYAML reads 1e-3 as text
    assert settings == traces.SFTSettings(tasks=("linear",), learning_rate=1e-3, warmup_ratio=0.0, steps=10,
                                        save_every=5)
    assert isinstance(settings.warmup_ratio, float)  # 0 and 0.0 give the same cache key
    json_path = tmp_path / "ok.json"
    json_path.write_text(json.dumps({"tasks": ["linear"], "learning_rate": 0.001, "warmup_ratio": 0, "steps": 10,
                                     "save_every": 5}))
    assert launch.settings_from_file(traces.SFTSettings, json_path) == settings


def test_unknown_kind_and_vllm_without_vllm_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "ppo", "--config", "x.yaml"])
    assert exit_.value.code == 2 and "invalid choice: 'ppo'" in capsys.readouterr().err
    path = tmp_path / "vllm.yaml"
    path.write_text("use_vllm: true\n")
    assert cli.main(["train", "grpo", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "GRPOSettings.use_vllm=True, but" in err and "set use_vllm: false" in err
    if not torch.cuda.is_available():
        assert "no CUDA GPU is visible" in err
    with pytest.raises(launch.ConfigError, match="vllm_mode must be one of colocate, server, got 'remote'"):
        launch.settings_from_config(grpo.GRPOSettings, {"vllm_mode": "remote"})


def test_sharded_checkpoints_without_full_weights_are_refused(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_STATE_DICT_TYPE", "SHARDED_STATE_DICT")
    with pytest.raises(launch.LaunchError, match="set fsdp_state_dict_type: FULL_STATE_DICT"):
        launch.check_sharding()
    monkeypatch.setenv("FSDP_STATE_DICT_TYPE", "FULL_STATE_DICT")
    launch.check_sharding()
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    with pytest.raises(launch.LaunchError, match="zero3_save_16bit_model: true"):
        launch.check_sharding()
    for name in ("fsdp2", "zero3"):  # the shipped configs pass the check
        fields = yaml.safe_load((REPO / "configs" / "accelerate" / f"{name}.yaml").read_text())
        assert fields.get("fsdp_config", {}).get("fsdp_state_dict_type", "FULL_STATE_DICT") == "FULL_STATE_DICT"
        assert fields.get("deepspeed_config", {}).get("zero3_save_16bit_model", True) is True


# ---- (d) vLLM options ---------------------------------------------------------------------------------------------

def test_vllm_options_reach_grpo_config(tmp_path):
    vllm = dict(use_vllm=True, vllm_mode="server", vllm_gpu_memory_utilization=0.55, vllm_enable_sleep_mode=True,
                vllm_tensor_parallel_size=2, vllm_server_host="10.1.2.3", vllm_server_port=8123)
    args = grpo.grpo_config(grpo.GRPOSettings(**vllm), tmp_path, device="cpu")  # the builder train uses
    assert {k: getattr(args, k) for k in vllm} == vllm
    from trl import GRPOConfig

    default = grpo.grpo_config(grpo.GRPOSettings(), tmp_path, device="cpu")
    trl_default = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False)
    assert {k: getattr(default, k) for k in vllm} == {k: getattr(trl_default, k) for k in vllm}
    assert default.per_device_train_batch_size == 64 and default.generation_batch_size == 64


def test_vllm_fields_at_defaults_leave_the_cache_key_unchanged(tiny_dirs):
    import trl

    settings = grpo.GRPOSettings(model=str(tiny_dirs["qwen3"]))
    before = ("model", "tasks", "steps", "prompts_per_step", "num_generations", "learning_rate", "warmup_ratio",
              "beta", "temperature", "max_completion_length", "enable_thinking", "save_every", "n_train", "seed")
    fields = dataclasses.asdict(settings)
    key = cache.config_hash({"kind": "GRPOSettings", "settings": {k: fields[k] for k in before},
                             "weights": cache.model_fingerprint(settings.model), "trl": trl.__version__})
    assert runs.run_key(settings) == key  # the key of runs cached before the vLLM fields existed
    assert runs.run_key(dataclasses.replace(settings, use_vllm=True)) != key


def test_paper_recipe_config_is_valid():
    settings = launch.settings_from_file(grpo.GRPOSettings, REPO / "configs" / "grpo-paper-vllm.yaml")
    assert settings.use_vllm and settings.num_generations == 16 and settings.max_completion_length == 1024
    assert {k: getattr(settings, k) for k in grpo.PAPER_GRPO} == grpo.PAPER_GRPO | {"max_completion_length": 1024}


# ---- distillation ---------------------------------------------------------------------------------------------------

def test_distillation_samples_caches_and_filters_teacher_traces(tiny_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(distill, "CHUNK", 3)
    settings = distill.DistillSettings(model=str(tiny_dirs["qwen2"]), teacher=str(tiny_dirs["qwen3"]),
                                       tasks=("linear",), n_train=5, samples_per_prompt=2, max_new_tokens=6,
                                       keep_correct=False, steps=2, save_every=2, batch_size=2)
    examples = problems.train_problems(settings.tasks, settings.n_train)
    traces = distill.teacher_traces(settings, examples, device="cpu")
    assert [len(t) for t in traces] == [2] * 5
    assert distill.traces_path(settings, examples).exists()

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled again instead of reading the cache")

    monkeypatch.setattr(distill, "generate", no_sampling)
    assert distill.teacher_traces(settings, examples, device="cpu") == traces
    records = distill.distill_records(settings, device="cpu")
    assert [r["answer"] for r in records] == [t for pair in traces for t in pair]
    with pytest.raises(ValueError, match="answered none of its 10 sampled traces correctly"):
        distill.distill_records(dataclasses.replace(settings, keep_correct=True), device="cpu")
    other_teacher = dataclasses.replace(settings, teacher=str(tiny_dirs["qwen2"]))
    assert runs.run_dir(other_teacher) != runs.run_dir(settings)  # the teacher's weights are in the key
    with pytest.raises(ValueError, match="needs do_sample=True"):
        dataclasses.replace(settings, do_sample=False)


def test_teacher_traces_do_not_depend_on_the_process_count(tiny_dirs, tmp_path, monkeypatch):
    """Distillation under torchrun: 150 prompts are 3 chunks of CHUNK, split over 2 processes and gathered; the
    traces file equals one process's traces."""
    settings = distill.DistillSettings(model=str(tiny_dirs["qwen2"]), teacher=str(tiny_dirs["qwen3"]),
                                       tasks=("linear",), n_train=150, samples_per_prompt=2, max_new_tokens=6,
                                       keep_correct=False, steps=2, save_every=2, batch_size=4)
    config = write_config(tmp_path / "distill.yaml", settings)
    out = launch_run(torchrun("-m", "toolkit", "train", "distill", "--config", str(config), "--device", "cpu"),
                     tmp_path / "two")
    assert out.returncode == 0, out.stdout[-3000:]
    examples = problems.train_problems(settings.tasks, settings.n_train)
    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path / "two"))
    shared = json.loads(distill.traces_path(settings, examples).read_text())["traces"]
    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path / "one"))
    assert distill.teacher_traces(settings, examples, device="cpu") == shared
    assert len(shared) == 150 > 2 * distill.CHUNK


def test_distillation_run_trains_the_student_on_the_teacher_traces(tiny_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path))
    settings = distill.DistillSettings(model=str(tiny_dirs["qwen2"]), teacher=str(tiny_dirs["qwen3"]),
                                       tasks=("linear",), n_train=4, max_new_tokens=6, keep_correct=False,
                                       steps=2, save_every=2, batch_size=2, learning_rate=1e-2, warmup_ratio=0.0)
    run = runs.train(settings, device="cpu")
    assert run.kind == "distill" and [c.label for c in run.checkpoints] == ["distill", "distill@2"]
    assert run.path.name.startswith("distill-") and "loss" in run.checkpoints[-1].metrics
    assert runs.train(settings, device="cpu").reused
