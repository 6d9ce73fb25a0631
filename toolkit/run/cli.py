"""``python -m toolkit``: run notebooks headlessly, build the model organism, train, regenerate the exercise
notebooks, compare two runs' numbers, calibrate the verdict rule, run the benchmarks."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _list_unfinished(run_folder: Path) -> int:
    """Print one line per notebook of the run that did not end ``ok`` (failed, interrupted, still ``running``)."""
    from toolkit.run.runner import describe_error, entry_folder

    index_path = run_folder / "index.json"
    entries = json.loads(index_path.read_text()) if index_path.exists() else []
    unfinished = [e for e in entries if e["status"] != "ok"]
    for entry in unfinished:
        where = entry_folder(run_folder, entry) / f"{entry['notebook']}.ipynb"
        what = describe_error(entry["error"]) if entry.get("error") else "did not finish"
        name = entry["notebook"] + (f" (control {entry['control']})" if "control" in entry else "")
        print(f"{entry['status'].upper()} {name}: {what} (see {where})", file=sys.stderr)
    return len(unfinished)


def _unwritable(folder: Path, what: str) -> bool:
    """Print ``error: …`` naming ``folder`` and the fix, and return True, when it cannot be made a folder to write
    into (:func:`toolkit.core.io.folder_problem`; created if missing): checked before any work starts."""
    from toolkit.core.io import folder_problem

    problem = folder_problem(folder)
    if problem:
        print(f"error: cannot write {what} into {folder}: {problem}; give --out a folder you can write to",
              file=sys.stderr)
    return problem is not None


def _run(args: argparse.Namespace) -> int:
    """Exit 0 when every notebook ran, 1 when one failed, 2 when the run was refused (before any kernel starts: an
    unknown notebook or profile, a bad parameter or model spec, an ``--out`` that cannot be written), 130 on Ctrl-C.
    ``--list-profiles`` prints the model profiles and exits 0."""
    from toolkit.run import profiles, runner

    if args.list_profiles:
        print(profiles.listing())
        return 0
    try:
        run_folder = runner.run(args.names, runner.parse_params(args.param), out_root=args.out,
                                kernel=args.kernel, seeds=args.seeds, control=args.control, profile=args.profile)
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
    """Build the organism (seed 0: the shipped build, into data/) or a replicate (``--seed N``: into the cache, loaded
    as ``organism@N``); exit 2 for a negative seed, an output folder that cannot be written, or a build of the same
    folder already running (its lock is held)."""
    from toolkit.core.locks import LockError
    from toolkit.core.specs import organism_dir
    from toolkit.organism.recipe import QUICK, Recipe
    from toolkit.studies.organism import build_organism, format_report

    if args.seed < 0:
        print(f"error: --seed must be a whole number >= 0 (0 is the shipped build), got {args.seed}", file=sys.stderr)
        return 2
    out = Path(args.out or organism_dir(args.seed))
    if args.if_missing and all((out / name / "config.json").exists() for name in ("organism", "organism-base")):
        print(f"organism checkpoints found in {out}; not rebuilding")
        return 0
    if _unwritable(out, "the organism"):
        return 2
    recipe = Recipe(**QUICK, seed=args.seed) if args.quick else Recipe(seed=args.seed)
    try:
        report = build_organism(out, recipe)
    except LockError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 0


def _train(args: argparse.Namespace) -> int:
    """One training run from a config file (:mod:`toolkit.training.launch`); also under torchrun/accelerate launch.
    Exit 0 when the run is done (trained, resumed or reused), 2 when its config or launch was refused."""
    from toolkit.core.models import ModelLoadError
    from toolkit.training import distill, grpo, launch, runs, traces  # noqa: F401 -- each registers its kind

    try:
        settings = launch.settings_from_file(runs.KINDS[args.kind], args.config)
        run = runs.train(settings, device=args.device, retrain=args.retrain)
    except (launch.ConfigError, launch.LaunchError, ModelLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if launch.process_state(args.device).is_main_process:
        how = "reused" if run.reused else f"trained {run.steps_trained} steps in {run.seconds:.1f} s"
        print(f"{run.kind} run in {run.path}: {how}; checkpoints at steps "
              f"{', '.join(str(c.step) for c in run.checkpoints[1:])}")
    return 0


def _exercises(args: argparse.Namespace) -> int:
    """Regenerate the exercise and solution notebooks from their masters; with ``--check`` write nothing and exit 1
    when one is missing or out of date. Either way exit 1 when notebooks remain whose master is gone (each missing
    master is named with its notebooks: restore it or delete them), 2 when a master cannot be read or split."""
    from toolkit.core.io import REPO_ROOT
    from toolkit.run import exercises

    def shown(path: Path) -> Path:
        return path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path

    root = exercises.EXERCISES_DIR
    try:
        stale = exercises.generate(root, check=args.check)
    except exercises.MasterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in stale:
        print(f"{'out of date' if args.check else 'wrote'}: {shown(path)}")
    orphaned = exercises.orphans(root)
    for master, notebooks in orphaned.items():
        print(f"orphaned: {', '.join(str(shown(p)) for p in notebooks)} (their master {shown(master)} is missing)")
    if orphaned:
        print("restore each missing master (e.g. from git), or delete its notebooks", file=sys.stderr)
    if args.check and stale:
        print("run `python -m toolkit exercises` to regenerate them", file=sys.stderr)
    if orphaned or (args.check and stale):
        return 1
    if not stale:
        print("exercise notebooks are up to date")
    return 0


def _compare(args: argparse.Namespace) -> int:
    """Exit 0 when the two runs' numbers agree, 1 when they differ, 2 when a folder is missing."""
    from toolkit.run import compare

    for folder in (args.before, args.after):
        if not Path(folder).is_dir():
            print(f"error: no run folder {folder}; give two run folders (runs/<stamp>)", file=sys.stderr)
            return 2
    return compare.main(args.before, args.after, frozenset(args.ignore))


def _calibrate(args: argparse.Namespace) -> int:
    """Simulate every path of the verdict rule (:mod:`toolkit.evaluation.calibration`) and write the report; exit 1
    when a path fails the bound (printed), 2 for an unknown path, a bad ``--reps`` or an ``--out`` that cannot be
    written (checked before the simulation)."""
    from toolkit.core.io import REPO_ROOT
    from toolkit.evaluation import calibration

    reps = args.reps or (calibration.FAST_REPS if args.fast else calibration.DEFAULT_REPS)
    # runs/calibration/calibration.json and docs/calibration.md are the full, default calibration of every path;
    # any other run writes its table beside its JSON, in runs/calibration/fast/ or custom/ unless --out says where
    full = not (args.out or args.fast or args.path or args.reps or args.seed)
    out = Path(args.out) if args.out else REPO_ROOT / "runs" / "calibration" / (
        "" if full else "fast" if args.fast else "custom")
    if _unwritable(out, "the calibration report"):
        return 2
    try:
        report = calibration.calibrate(reps, seed=args.seed, paths=args.path or None)
    except (KeyError, ValueError) as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    md = REPO_ROOT / "docs" / "calibration.md" if full else out / "calibration.md"
    flags = "".join([" --fast" if args.fast else "", f" --reps {args.reps}" if args.reps else "",
                     f" --seed {args.seed}" if args.seed else "", "".join(f" --path {p}" for p in args.path)])
    calibration.write(report, out / "calibration.json", md, command=f"python -m toolkit calibrate{flags}")
    for row in report["paths"]:
        r = row["rates"]
        rates = "  ".join(f"{k.replace('false_', 'false ')} {r[k]['rate']:.3f}" for k in
                          ("false_reproduces", "false_contradicts", "false_opposite", "power") if r[k])
        print(f"{row['status'].upper():8s} {row['name']:45s} {rates}" + ("  (legacy)" if row["legacy"] else ""))
    print(f"wrote {out / 'calibration.json'} and {md} ({report['seconds']:.0f} s, {reps} replicates per condition)")
    if report["failed"]:
        print(f"over the bound of {calibration.BOUND}: {', '.join(report['failed'])}", file=sys.stderr)
        return 1
    return 0


def _bench(args: argparse.Namespace) -> int:
    """The benchmark's exit status; 2, before it runs, for an unknown benchmark, an option out of range or an unknown
    choice (its parser names the valid values) and an ``--out`` file that cannot be written."""
    from toolkit import benchmarks

    name = args.bench_args[0] if args.bench_args and not args.bench_args[0].startswith("-") else "foundation"
    if name not in benchmarks.NAMES:
        print(f"error: unknown benchmark {name!r}; choose one of {', '.join(benchmarks.NAMES)}", file=sys.stderr)
        return 2
    given = argparse.ArgumentParser(prog="python -m toolkit bench", add_help=False)
    given.add_argument("--out")
    out = given.parse_known_args(args.bench_args)[0].out
    if out is not None and Path(out).is_dir():
        print(f"error: --out {out} is a folder; give the path of the results file (.json)", file=sys.stderr)
        return 2
    if out is not None and _unwritable(Path(out).parent, "the benchmark results"):
        return 2
    try:
        return benchmarks.main(args.bench_args)
    except SystemExit as e:  # argparse's refusal of a bad option (its message is printed): the status, not a raise
        if e.code == 2:
            return 2
        raise


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), dispatch to a subcommand and return its exit code."""
    # the console command (`toolkit`, from [project.scripts]) or the module (`python -m toolkit`)
    prog = "toolkit" if Path(sys.argv[0]).name == "toolkit" else "python -m toolkit"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="execute notebooks with papermill into runs/<stamp>/")
    p.add_argument("names", nargs="*", help="notebook names or prefixes, e.g. 00 02_cmap (default: all)")
    p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter every chosen notebook declares, typed by its default there "
                        "(true/false, a number, text, a Python list)")
    p.add_argument("--out", default=None, help="folder for run folders (default: <repo>/runs)")
    p.add_argument("--seeds", type=int, default=None, metavar="N",
                   help="run every notebook with seed=0..N-1 into seed-<k>/ and aggregate the claims across seeds")
    p.add_argument("--control", default=None, metavar="random",
                   help="then run the notebooks again into control-random/ with every model parameter "
                        "re-initialised (random:<spec>: same architecture, random weights); the top "
                        "scorecard shows each finding's verdict on the control. With --seeds: once, seed 0")
    p.add_argument("--kernel", default=None,
                   help="Jupyter kernel (default: reasoning-circuits, installed if missing)")
    p.add_argument("--profile", default=None, metavar="NAME",
                   help="a model profile's parameters for every notebook (e.g. qwen3-0.6b), -p over them; "
                        "see --list-profiles and docs/methods.md")
    p.add_argument("--list-profiles", action="store_true", help="print the model profiles and exit")
    p.set_defaults(func=_run)

    p = sub.add_parser("build-organism", help="train the embedded model organism's two checkpoints")
    p.add_argument("--quick", action="store_true", help="a few steps only, to check the pipeline")
    p.add_argument("--seed", type=int, default=0, metavar="N",
                   help="a replicate: the same recipe with seed N (initialisation and data order), built into the "
                        "cache and loaded as organism@N / organism-base@N (default 0: the shipped build)")
    p.add_argument("--out", default=None,
                   help="output folder (default: $TOOLKIT_DATA or data/ for seed 0, the cache for a replicate)")
    p.add_argument("--if-missing", action="store_true", help="do nothing when both checkpoints exist")
    p.set_defaults(func=_build_organism)

    p = sub.add_parser("train", help="train (or resume, or reuse) one SFT, GRPO or distillation run from a config "
                                      "file; runs under torchrun / accelerate launch too")
    p.add_argument("kind", choices=("sft", "grpo", "distill"), help="the run's kind (its settings type)")
    p.add_argument("--config", required=True, metavar="FILE",
                   help="JSON or YAML mapping of the settings' fields (see toolkit.training.launch)")
    p.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu or cuda (default: auto)")
    p.add_argument("--retrain", action="store_true", help="clear a finished or unfinished run and train it again")
    p.set_defaults(func=_train)

    p = sub.add_parser("exercises", help="regenerate notebooks/exercises/ (exercises and solutions) from the masters "
                                         "in notebooks/exercises/masters/")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 if a notebook is out of date (or its master is missing)")
    p.set_defaults(func=_exercises)

    p = sub.add_parser("compare", help="compare every number of two run folders' results and claims (timings and "
                                       "paths aside); exit 1 when any differs")
    p.add_argument("before", help="a run folder (runs/<stamp>)")
    p.add_argument("after", help="another run folder")
    p.add_argument("--ignore", action="append", default=[], metavar="KEY",
                   help="leave out every value under this key (a text field whose format changed on purpose)")
    p.set_defaults(func=_compare)

    p = sub.add_parser("calibrate", help="simulate every path of the verdict rule and report its false verdicts "
                                         "(runs/calibration/calibration.json, docs/calibration.md); exit 1 when a "
                                         "path is over the 5%% bound")
    p.add_argument("--reps", type=int, default=None, metavar="N",
                   help="replicates per path and condition (default 1000; --fast: 200)")
    p.add_argument("--fast", action="store_true", help="200 replicates per condition (about a minute)")
    p.add_argument("--seed", type=int, default=0, help="the simulation's seed (default 0)")
    p.add_argument("--path", action="append", default=[], metavar="NAME",
                   help="only this path (a name such as runs-difference:3v3, or a family such as runs-difference); "
                        "repeatable")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write calibration.json and calibration.md here (default: the full default run writes "
                        "runs/calibration/calibration.json and docs/calibration.md, --fast runs/calibration/fast/, "
                        "any other runs/calibration/custom/)")
    p.set_defaults(func=_calibrate)

    p = sub.add_parser("bench", add_help=False,
                       help="run a benchmark: bench [foundation|cmap|eap|gpu|smoke] [options]; see bench NAME --help")
    p.set_defaults(func=_bench)

    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":
        args.bench_args = extra  # the benchmark parses its own options
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args.func(args)
