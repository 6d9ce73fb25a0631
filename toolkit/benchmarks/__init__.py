"""Benchmarks: ``python -m toolkit bench [NAME] [options]``.

Each module here has ``main(argv) -> int``; it measures a speed or memory goal as a ratio against a baseline timed in
the same run, and writes its numbers to ``bench/results/<name>.json``. ``NAMES`` lists them; ``foundation`` is the
default.
"""

import importlib

NAMES = ("foundation", "cmap", "eap", "gpu", "smoke")


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``[NAME] [options]`` to ``toolkit.benchmarks.NAME.main(options)``."""
    argv = list(argv or [])
    name = argv.pop(0) if argv and not argv[0].startswith("-") else "foundation"
    if name not in NAMES:
        raise SystemExit(f"unknown benchmark {name!r}; choose one of {', '.join(NAMES)}")
    try:
        module = importlib.import_module(f"toolkit.benchmarks.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"toolkit.benchmarks.{name}":
            raise
        raise SystemExit(f"benchmark {name!r} is not built yet") from None
    return module.main(argv)
