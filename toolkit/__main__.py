"""Command line: ``python -m toolkit {run,build-organism,bench}``; see ``--help`` of each."""

from toolkit.run.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
