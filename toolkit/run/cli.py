"""``python -m toolkit``: run notebooks headlessly, build the model organism, run the benchmarks."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _list_unfinished(run_folder: Path) -> int:
    """Print one line per notebook of the run that did not end ``ok`` (failed, interrupted, still ``running``)."""
    from toolkit.run.runner import describe_error

    index_path = run_folder / "index.json"
    entries = json.loads(index_path.read_text()) if index_path.exists() else []
    unfinished = [e for e in entries if e["status"] != "ok"]
    for entry in unfinished:
        where = run_folder / (f"seed-{entry['seed']}" if "seed" in entry else "") / f"{entry['notebook']}.ipynb"
        what = describe_error(entry["error"]) if entry.get("error") else "did not finish"
        print(f"{entry['status'].upper()} {entry['notebook']}: {what} (see {where})", file=sys.stderr)
    return len(unfinished)


def _run(args: argparse.Namespace) -> int:
    """Exit 0 when every notebook ran, 1 when one failed, 2 when the run was refused, 130 on Ctrl-C."""
    from toolkit.run import runner

    try:
        run_folder = runner.run(args.names, runner.parse_params(args.param), out_root=args.out,
                                kernel=args.kernel, seeds=args.seeds)
    except runner.RunnerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except runner.RunInterrupted as e:
        _list_unfinished(e.folder)
        print(e, file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted before the run folder was made; nothing ran", file=sys.stderr)
        return 130
    return 1 if _list_unfinished(run_folder) else 0


def _build_organism(args: argparse.Namespace) -> int:
    from toolkit.core.models import data_dir
    from toolkit.organism.recipe import QUICK, Recipe
    from toolkit.studies.organism import build_organism, format_report

    out = Path(args.out or data_dir())
    if args.if_missing and all((out / name / "config.json").exists() for name in ("organism", "organism-base")):
        print(f"organism checkpoints found in {out}; not rebuilding")
        return 0
    report = build_organism(out, Recipe(**QUICK) if args.quick else Recipe())
    print(format_report(report))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from toolkit import benchmarks

    return benchmarks.main(args.bench_args)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), dispatch to a subcommand and return its exit code."""
    parser = argparse.ArgumentParser(prog="python -m toolkit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="execute notebooks with papermill into runs/<stamp>/")
    p.add_argument("names", nargs="*", help="notebook names or prefixes, e.g. 00 02_cmap (default: all)")
    p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter every chosen notebook declares, typed by its default there "
                        "(true/false, a number, text, a Python list)")
    p.add_argument("--out", default=None, help="folder for run folders (default: <repo>/runs)")
    p.add_argument("--seeds", type=int, default=None, metavar="N",
                   help="run every notebook with seed=0..N-1 into seed-<k>/ and aggregate the claims across seeds")
    p.add_argument("--kernel", default=None,
                   help="Jupyter kernel (default: reasoning-circuits, installed if missing)")
    p.set_defaults(func=_run)

    p = sub.add_parser("build-organism", help="train the embedded model organism's two checkpoints")
    p.add_argument("--quick", action="store_true", help="a few steps only, to check the pipeline")
    p.add_argument("--out", default=None, help="output folder (default: $TOOLKIT_DATA or data/)")
    p.add_argument("--if-missing", action="store_true", help="do nothing when both checkpoints exist")
    p.set_defaults(func=_build_organism)

    p = sub.add_parser("bench", help="run a benchmark: bench [foundation|cmap|eap] [options]; see bench NAME --help",
                       add_help=False)
    p.set_defaults(func=_bench)

    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":
        args.bench_args = extra  # the benchmark parses its own options
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args.func(args)
