"""The machine's load beside every benchmark's figures, and the rule that says when two timed legs are comparable.

Every benchmark reads ``os.getloadavg()`` at its start and at its end (:func:`reading`, written as ``load_average``
beside its figures), and reads the 1-minute load average before and after every timed run of every leg of a
comparison (:class:`LegLoads`; a *leg* is one side of a ratio: the method, or its baseline).

**The rule** (:func:`comparability`, :data:`RULE`): the legs of a ratio are comparable when their mean 1-minute load
averages differ by at most :data:`TOLERANCE` = 1.0 (one runnable process: on a 2-core machine one extra busy process
takes half of the CPU). Otherwise the ratio is recorded but marked ``"comparable": false`` with the reason, and a
warning is printed: it is not a valid figure. A factor between the loads is not used: below a load of 1 (0.1 against
0.4) a factor says nothing about contention, and from a load of 1 up a factor of 2 is already a difference of more
than 1.0. Where the load average is unavailable, nothing can be checked and the ratio is marked not comparable too.

Interleaved legs (A B A B ..., :func:`interleaved`) see the same load unless it moves between one run and the next;
sequential legs (``bench cmap``: ours, then the baselines, each in its own process) are where the rule bites. The load
average counts this process too: a single-threaded benchmark raises it by up to 1.0 over its first minutes, which the
tolerance absorbs.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable

TOLERANCE = 1.0
RULE = (f"the legs of a ratio are comparable when their mean 1-minute load averages (os.getloadavg, read before and "
        f"after each timed run) differ by at most {TOLERANCE}")


def one_minute() -> float | None:
    """The 1-minute load average, or None where the platform has none."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def reading() -> dict | None:
    """The 1-, 5- and 15-minute load averages now (``{"1min": .., "5min": .., "15min": ..}``), or None."""
    try:
        values = os.getloadavg()
    except (OSError, AttributeError):
        return None
    return {k: round(v, 2) for k, v in zip(("1min", "5min", "15min"), values, strict=True)}


def comparability(loads: dict[str, float | None], tolerance: float = TOLERANCE) -> dict:
    """The verdict of :data:`RULE` on the legs' mean 1-minute loads (``{leg: load}``): ``{"comparable": bool,
    "reason": str | None, "legs_load_1min": loads, "rule": RULE}``. A pure function of its arguments."""
    out = {"comparable": True, "reason": None, "legs_load_1min": dict(loads), "rule": RULE}
    missing = [leg for leg, v in loads.items() if v is None]
    if missing or not loads:
        return out | {"comparable": False, "reason": "the load average is unavailable (os.getloadavg), so the legs' "
                                                     "loads cannot be compared"}
    low, high = min(loads, key=loads.get), max(loads, key=loads.get)
    if loads[high] - loads[low] > tolerance:
        out |= {"comparable": False,
                "reason": f"the legs ran under very different loads: {high} at a 1-minute load average of "
                          f"{loads[high]:.2f}, {low} at {loads[low]:.2f} (more than {tolerance} apart)"}
    return out


def warn_if_incomparable(what: str, verdict: dict) -> None:
    """Print a warning to stderr when ``verdict`` (from :func:`comparability`) says the legs are not comparable."""
    if not verdict["comparable"]:
        print(f"WARNING: {what}: the ratio is NOT a valid comparison: {verdict['reason']}", file=sys.stderr,
              flush=True)


class LegLoads:
    """The 1-minute load average read before and after each timed run of each leg."""

    def __init__(self):
        self.samples: dict[str, list[float | None]] = {}

    def add(self, leg: str, *values: float | None) -> None:
        self.samples.setdefault(leg, []).extend(values)

    def run(self, leg: str, fn: Callable[[], object]) -> float:
        """Run ``fn`` between two readings; its seconds."""
        before = one_minute()
        t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
        self.add(leg, before, one_minute())
        return seconds

    @contextlib.contextmanager
    def during(self, leg: str, interval: float = 5.0):
        """Within: the 1-minute load average is read at entry, every ``interval`` seconds (the kernel updates it
        every 5), and at exit, for a long leg."""
        stop = threading.Event()
        readings = [one_minute()]

        def loop():
            while not stop.wait(interval):
                readings.append(one_minute())

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.add(leg, *readings, one_minute())

    def means(self) -> dict[str, float | None]:
        return {leg: None if not v or None in v else round(statistics.fmean(v), 2) for leg, v in self.samples.items()}

    def verdict(self) -> dict:
        """:func:`comparability` of the legs' mean loads, with each leg's first and last reading."""
        legs = {leg: {"start": v[0], "end": v[-1]} for leg, v in self.samples.items()}
        return comparability(self.means()) | {"legs_load_1min_start_end": legs}


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: bool = True,
                sync: Callable[[], None] | None = None, loads: LegLoads | None = None) -> tuple[dict[str, float], dict]:
    """Median seconds of each function over ``repeats`` interleaved rounds (A B C A B C ..., so drift in the machine
    hits all alike; one untimed warm-up each first), and the :class:`LegLoads` verdict on them (``loads``: add to
    these). ``sync`` (e.g. a CUDA synchronise) runs before each timed run and inside its timing."""
    sync = sync or (lambda: None)
    if warmup:
        for fn in fns.values():
            fn()
        sync()
    loads, times = loads or LegLoads(), {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            sync()
            times[k].append(loads.run(k, lambda fn=fn: (fn(), sync())))
    return {k: statistics.median(v) for k, v in times.items()}, loads.verdict()


def stamp(results: dict, start: dict | None) -> dict:
    """``results`` with ``load_average``: the reading at the benchmark's start (``start``) and now, and the rule."""
    results["load_average"] = {"start": start, "end": reading(), "rule": RULE}
    return results
