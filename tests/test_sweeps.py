"""Sweeps split across processes (:mod:`toolkit.core.distributed`): the split, the gathers, failures, the launch
environment, and a circuit sweep over four tiny checkpoints under ``torchrun --nproc_per_node 2`` giving the
one-process result bit for bit, each checkpoint computed by exactly one process."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from toolkit.core import distributed

ROOT = Path(__file__).resolve().parent.parent

# ---- the split and the sweep, with threads standing in for processes --------------------------------------------


class _Board:
    """What a process group does for ``gather``: every thread posts its object, then all read all of them."""

    def __init__(self, world: int):
        self.barrier, self.slots = threading.Barrier(world, timeout=20), [None] * world


class _ThreadProcesses(distributed.Processes):
    def gather(self, obj) -> list:
        board = self.group
        board.barrier.wait()
        board.slots[self.rank] = obj
        board.barrier.wait()
        out = list(board.slots)
        board.barrier.wait()
        return out


def _run_threads(world: int, body) -> list:
    """``body(procs)`` in ``world`` threads; each thread's return value, or the exception it raised."""
    board, out = _Board(world), [None] * world

    def run(rank):
        try:
            out[rank] = body(_ThreadProcesses(rank, world, group=board))
        except Exception as err:
            out[rank] = err

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def test_share_is_contiguous_blocks_as_accelerate_splits():
    # accelerate's documented example: ["A", "B", "C"] over two processes → ["A", "B"] and ["C"]
    assert [distributed.Processes(r, 2).share("ABC") for r in range(2)] == [["A", "B"], ["C"]]
    for n in range(0, 9):
        for world in (1, 2, 3, 4):
            blocks = [distributed.Processes(r, world).share(list(range(n))) for r in range(world)]
            assert sum(blocks, []) == list(range(n))
            sizes = [len(b) for b in blocks]
            assert sizes == sorted(sizes, reverse=True) and max(sizes) - min(sizes) <= 1


def test_sweep_computes_each_missing_entry_once_and_every_process_returns_all():
    cache, calls, lock = {"b": "B"}, [], threading.Lock()

    def body(procs):
        def compute(key):
            with lock:
                calls.append((procs.rank, key))
                cache[key] = key.upper()
            return cache[key]
        return distributed.sweep(["a", "b", "c", "a", "d", "e"], cache.get, compute, procs)

    got = _run_threads(2, body)
    assert sorted(calls) == [(0, "a"), (0, "c"), (1, "d"), (1, "e")]  # missing a c d e: two each, in order
    for swept in got:
        assert swept.values == {"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"}
        assert swept.computed == {"a": 0, "c": 0, "d": 1, "e": 1}
    calls.clear()
    again = _run_threads(2, body)  # everything cached now
    assert calls == [] and all(s.computed == {} and s.values == got[0].values for s in again)


def test_a_failed_share_stops_every_process_with_its_rank_and_key():
    cache = {}

    def body(procs):
        def compute(key):
            if key == "d":
                raise ValueError("no pairs")
            cache[key] = key
            return key
        return distributed.sweep(list("abcd"), cache.get, compute, procs)

    main, other = _run_threads(2, body)
    assert isinstance(other, ValueError)  # the failing process raises its own error
    assert isinstance(main, distributed.DistributedError)
    assert "process 1 of 2 failed computing d: ValueError: no pairs" in str(main) and "again" in str(main)
    assert sorted(cache) == ["a", "b", "c"]  # what finished stays cached for the rerun


def test_a_cache_that_the_processes_do_not_share_is_named():
    caches = [{}, {}]  # e.g. TOOLKIT_CACHE on each machine's local disk

    def body(procs):
        def compute(key):
            caches[procs.rank][key] = key
            return key
        return distributed.sweep(["a", "b"], caches[procs.rank].get, compute, procs)

    for got in _run_threads(2, body):
        assert isinstance(got, distributed.DistributedError)
        assert "its entry cannot be read here; the cache (TOOLKIT_CACHE) must be one folder" in str(got)


def test_one_process_touches_nothing_distributed(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.processes() is distributed.SINGLE
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.processes() is distributed.SINGLE
    assert not torch.distributed.is_initialized()
    assert distributed.SINGLE.device("auto") == "auto"


@pytest.mark.parametrize("env, expected", [
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 but RANK, MASTER_ADDR, MASTER_PORT unset: launch with `torchrun"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0: the number of processes must be at least 1"),
    ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}, "RANK=2 is outside 0..1"),
])
def test_a_broken_launch_environment_is_named_before_any_process_group(monkeypatch, env, expected):
    for var in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    with pytest.raises(distributed.DistributedError, match=re.escape(expected)):
        distributed.processes()
    assert not torch.distributed.is_initialized()


# ---- a circuit sweep under torchrun ---------------------------------------------------------------------------------

SCRIPT = '''
import hashlib, json, sys, time
from dataclasses import replace
import torch
torch.set_num_threads(1)
from toolkit.core import distributed
from toolkit.studies import grpo_dynamics as study
from toolkit.training.problems import eval_problems

specs, out, use_accelerate = {int(k): v for k, v in json.loads(sys.argv[1]).items()}, sys.argv[2], sys.argv[3] == "1"
if use_accelerate:  # a script that set up accelerate first: the sweep joins its process group
    from accelerate import PartialState
    PartialState(cpu=True)
examples = eval_problems(("arithmetic",), 4)
settings = study.SnapshotSettings(ig_steps=2, batch_size=4)
t0 = time.perf_counter()
got = {inputs: study.distributed_snapshot_scores(specs, examples, replace(settings, inputs=inputs), device="cpu")
       for inputs in ("own", "fixed")}
seconds = time.perf_counter() - t0
procs = distributed.processes()

def digest(s):
    data = s.values.contiguous().numpy().tobytes() + s.per_example.contiguous().numpy().tobytes()
    return [hashlib.sha256(data).hexdigest(), s.meta["rank"], s.meta["cached"], s.meta["pairs_hash"], s.meta["n_pairs"]]

with open(f"{out}/rank{procs.rank}.json", "w") as f:
    json.dump({"world": procs.world, "seconds": seconds,
               "got": {i: {str(k): digest(s) for k, s in by.items()} for i, by in got.items()}}, f)
distributed.finish()
'''


def _checkpoint(path: Path, seed: int) -> str:
    """A tiny random Qwen3 whose attention and MLP outputs are scaled ×30, so that its greedy answers depend on the
    problem (unscaled, a random tiny model repeats its last token whatever it reads, and no pair differs)."""
    from safetensors.torch import load_file, save_file

    from toolkit.organism.tiny import tiny_model_dir

    folder = tiny_model_dir("qwen3", path, seed=seed)
    weights = load_file(folder / "model.safetensors")
    weights = {n: w * 30 if n.endswith(("o_proj.weight", "down_proj.weight")) else w for n, w in weights.items()}
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return str(folder)


def _launch(tmp_path: Path, name: str, specs: dict, nproc: int,
            use_accelerate: bool = False) -> tuple[dict[int, dict], Path]:
    """The sweep script in ``nproc`` processes (1: plain python; else torchrun on 127.0.0.1, a free port), with a
    cache of its own; each rank's report."""
    out, cache = tmp_path / name, tmp_path / f"{name}-cache"
    out.mkdir()
    script = tmp_path / "sweep_script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "TOOLKIT_CACHE": str(cache), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOOLKIT_HEADLESS": "1", "PYTHONPATH": str(ROOT)}
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    args = [str(script), json.dumps(specs), str(out), "1" if use_accelerate else "0"]
    if nproc > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        args = ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
                f"--master_port={port}", *args]
    proc = subprocess.Popen([sys.executable, *args], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:  # timed out: stop torchrun and its workers (one process group)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, stderr[-3000:]
    reports = {int(p.stem[4:]): json.loads(p.read_text()) for p in out.glob("rank*.json")}
    assert sorted(reports) == list(range(nproc)) and all(r["world"] == nproc for r in reports.values())
    return reports, cache


def _saved(cache: Path) -> dict[str, dict]:
    """Every saved snapshot (path under the cache → JSON), without what differs by run: seconds and rank."""
    out = {}
    for path in sorted(cache.rglob("*.scores.json")):
        data = json.loads(path.read_text())
        data["meta"] = {k: v for k, v in data["meta"].items() if k not in ("snapshot_seconds", "rank")}
        out[str(path.relative_to(cache))] = data
    return out


def test_two_processes_give_the_one_process_sweep_bit_for_bit(tmp_path):
    specs = {10 * i: _checkpoint(tmp_path / f"checkpoint-{10 * i}", seed=i) for i in range(4)}
    one, one_cache = _launch(tmp_path, "one", specs, 1)
    two, two_cache = _launch(tmp_path, "two", specs, 2)
    ranks = {0: 0, 10: 0, 20: 1, 30: 1}  # four fresh checkpoints: two per process, in step order
    for inputs in ("own", "fixed"):
        base = one[0]["got"][inputs]
        assert {int(k): v[1] for k, v in base.items()} == dict.fromkeys(ranks, 0)
        for report in two.values():  # every process returns the whole result, equal to one process's
            got = report["got"][inputs]
            assert {k: v[0] for k, v in got.items()} == {k: v[0] for k, v in base.items()}  # values, per pair
            assert {int(k): v[1] for k, v in got.items()} == ranks  # computed by exactly one process each
            assert not any(v[2] for v in got.values())  # none was cached before
        hashes = {v[3] for v in base.values()}
        assert len(hashes) == (1 if inputs == "fixed" else 4)  # fixed: the same pairs, built alike by each process
        assert all(v[4] > 0 for v in base.values())
    saved = _saved(two_cache)
    assert len(saved) == 8 and saved == _saved(one_cache)  # the cache files agree but for seconds and rank
    print(f"\n1 process: {one[0]['seconds']:.2f} s; 2 processes: {max(r['seconds'] for r in two.values()):.2f} s")
    # a script that set accelerate up first: the sweep joins accelerate's process group, with the same result
    again, _ = _launch(tmp_path, "accelerate", specs, 2, use_accelerate=True)
    assert all(r["got"] == two[0]["got"] for r in again.values())
