"""Benchmarks: ``python -m toolkit bench [NAME] [options]``.

Each module here has ``main(argv) -> int``; it measures a speed or memory goal as a ratio against a baseline timed in
the same run, and writes its numbers to ``bench/results/<name>.json`` with the load average at its start and end and,
beside each ratio, whether its legs ran under comparable loads (:mod:`toolkit.benchmarks.load`). ``NAMES`` lists them;
``foundation`` is the default. Options out of range, an unknown benchmark or case are refused with exit status 2 and
the valid values, before any work (:mod:`toolkit.benchmarks.options`).
"""

import importlib
import sys

NAMES = ("foundation", "cmap", "eap", "gpu", "smoke")


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``[NAME] [options]`` to ``toolkit.benchmarks.NAME.main(options)``."""
    argv = list(argv or [])
    name = argv.pop(0) if argv and not argv[0].startswith("-") else "foundation"
    if name not in NAMES:
        print(f"error: unknown benchmark {name!r}; choose one of {', '.join(NAMES)}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(f"toolkit.benchmarks.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"toolkit.benchmarks.{name}":
            raise
        raise SystemExit(f"benchmark {name!r} is not built yet") from None
    return module.main(argv)
