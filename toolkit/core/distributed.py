"""Sweeps split across the processes of a ``torchrun`` / ``accelerate launch`` job, each writing its share of cache
entries; every process ends with the whole result.

A sweep (:func:`sweep`) is a list of keys, each with a cache entry (``read(key)``: the entry, or None when missing)
and a way to compute and write it (``compute(key)``, atomic writes as in :mod:`toolkit.core.io`):

1. every process reads the entries already cached; the keys missing in any process are gathered, in key order;
2. the missing keys are split into contiguous blocks, as ``accelerate.PartialState.split_between_processes`` does
   (block r goes to rank r; the first ``len % world`` blocks have one more key); each process computes its block;
3. the processes gather (a barrier) with the outcome of each block: if one failed, every process raises an error
   naming the rank, key and error (what was written stays cached, so a rerun continues);
4. every process reads the entries the others wrote, so each returns the same assembled result.

One process (a notebook, pytest, a plain ``python`` script): ``WORLD_SIZE`` unset or 1, nothing distributed is
touched, and :func:`sweep` is the plain loop. Several: :func:`processes` joins the ``torch.distributed`` group that
``torchrun`` or ``accelerate launch`` describes in the environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``), or the one accelerate already initialised (``PartialState`` reuses a group that
exists, and we reuse its). The gathers run on a gloo group of their own with a long timeout
(:data:`SWEEP_TIMEOUT`; a share of EAP-IG snapshots can take hours while the others wait). Accelerate itself is not
imported here (core never imports training libraries, ``tests/test_layering.py``): this is the group it builds on.
The world size is read from that group, not from accelerate's state: on a machine without a GPU, ``PartialState()``
without ``cpu=True`` under torchrun starts the group but reports one process (measured, accelerate 1.15).
An entry must not depend on which process computes it (fixed inputs, seeded); on CPU, bit-for-bit equality also
needs equal thread counts (torchrun sets ``OMP_NUM_THREADS=1`` unless it is set). Tests: ``tests/test_sweeps.py``
(2 processes under ``torchrun`` give the 1-process result, bit for bit).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import torch

from toolkit.core.progress import progress

SWEEP_TIMEOUT = timedelta(hours=24)  # how long a process waits at a gather for the others' shares
_LAUNCH_VARS = ("RANK", "MASTER_ADDR", "MASTER_PORT")
_GROUP: list = []  # the sweeps' gloo group, made once per job


class DistributedError(RuntimeError):
    """A launch environment that cannot form a process group, or a process that failed its share of a sweep."""


@dataclass(frozen=True)
class Processes:
    """This process's place in the job: ``rank`` of ``world`` processes (``local_rank`` on its machine)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group: object = field(default=None, compare=False, repr=False)  # torch.distributed group of the gathers

    def share(self, items: Sequence) -> list:
        """This process's contiguous block of ``items`` (the split of ``split_between_processes``)."""
        per, extra = divmod(len(items), self.world)
        start = self.rank * per + min(self.rank, extra)
        return list(items[start:start + per + (1 if self.rank < extra else 0)])

    def gather(self, obj) -> list:
        """``obj`` of every process, in rank order (a barrier: returns once every process has called it)."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj, group=self.group)
        return out

    def device(self, device: str = "auto") -> str:
        """``"auto"`` with several processes on a CUDA machine: this process's own GPU (``cuda:<local rank>``,
        set as the current device); otherwise ``device`` unchanged."""
        if device != "auto" or self.world == 1 or not torch.cuda.is_available():
            return device
        index = self.local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return f"cuda:{index}"


SINGLE = Processes()


def _env_int(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None and default is not None:
        return default
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise DistributedError(f"environment variable {name}={raw!r} is not an integer; launch with `torchrun "
                               "--nproc_per_node N script.py` or `accelerate launch`, which set it") from None


def processes(timeout: timedelta = SWEEP_TIMEOUT) -> Processes:
    """This process's :class:`Processes`: :data:`SINGLE` when ``WORLD_SIZE`` is unset or 1 and no process group
    exists (nothing is initialised); else the job's ranks, joining (or starting) its ``torch.distributed`` group."""
    dist = torch.distributed
    started = dist.is_available() and dist.is_initialized()
    world = dist.get_world_size() if started else _env_int("WORLD_SIZE", 1)
    if world < 1:
        raise DistributedError(f"WORLD_SIZE={world}: the number of processes must be at least 1")
    if world == 1:
        return SINGLE
    if not started:
        missing = [v for v in _LAUNCH_VARS if not os.environ.get(v)]
        if missing:
            raise DistributedError(f"WORLD_SIZE={world} but {', '.join(missing)} unset: launch with `torchrun "
                                   f"--nproc_per_node {world} script.py` or `accelerate launch`, or unset WORLD_SIZE "
                                   "to run in one process")
        rank = _env_int("RANK")
        if not 0 <= rank < world:
            raise DistributedError(f"RANK={rank} is outside 0..{world - 1} (WORLD_SIZE={world})")
        if not dist.is_available():
            raise DistributedError("this torch build has no torch.distributed; run with WORLD_SIZE unset")
        backend = "cuda:nccl,cpu:gloo" if torch.cuda.is_available() else "gloo"  # as accelerate's FSDP choice
        dist.init_process_group(backend=backend, timeout=timeout)
    if not _GROUP:
        _GROUP.append(dist.new_group(backend="gloo", timeout=timeout))
    return Processes(dist.get_rank(), world, _env_int("LOCAL_RANK", 0), _GROUP[0])


def finish() -> None:
    """Leave the process group (call once at the end of a launched script; nothing to do in one process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        _GROUP.clear()
        torch.distributed.destroy_process_group()


@dataclass
class Swept:
    """A sweep's result: ``values[key]`` for every key, and the keys computed by this sweep (not read from the cache
    as it was), with the rank that computed each."""

    values: dict
    computed: dict[Hashable, int]


def sweep(keys: Sequence[Hashable], read: Callable[[Hashable], object], compute: Callable[[Hashable], object],
          procs: Processes = SINGLE, desc: str = "sweep") -> Swept:
    """The entries of ``keys`` (duplicates dropped), read from the cache or computed, split across ``procs``
    (steps 1–4 of the module docstring). ``read(key)``: the cached entry or None; ``compute(key)``: computes the
    entry, writes it where ``read`` finds it, and returns it."""
    keys = list(dict.fromkeys(keys))
    values = {k: v for k in keys if (v := read(k)) is not None}
    seen = {k for missing in procs.gather([k for k in keys if k not in values]) for k in missing}
    missing = [k for k in keys if k in seen]  # 1. (gathered: every process splits the same list)
    blocks = [Processes(r, procs.world).share(missing) for r in range(procs.world)]
    failure = None
    label = desc if procs.world == 1 else f"{desc} (rank {procs.rank}/{procs.world})"
    try:
        for key in progress(blocks[procs.rank], desc=label, total=len(blocks[procs.rank])):  # 2.
            values[key] = compute(key)
    except Exception as err:
        failure = (key, f"{type(err).__name__}: {err}")
        procs.gather(failure)  # the others must not wait for this process at the gather
        raise
    for rank, outcome in enumerate(procs.gather(failure)):  # 3.
        if outcome is not None:
            raise DistributedError(f"process {rank} of {procs.world} failed computing {outcome[0]}: {outcome[1]}; "
                                   "the entries written are cached, so running the sweep again continues from them")
    computed = {k: r for r, block in enumerate(blocks) for k in block}
    for key in missing:  # 4.
        if key not in values:
            values[key] = read(key)
            if values[key] is None:
                raise DistributedError(f"process {computed[key]} computed {key} but its entry cannot be read here; "
                                       "the cache (TOOLKIT_CACHE) must be one folder that every process sees")
    return Swept({k: values[k] for k in keys}, computed)
