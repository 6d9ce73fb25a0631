"""The data of the corrupted fine-tuning study (notebook 01): wrong-answer training problems, correct-answer
validation problems and held-out evaluation sets, deterministic from a seed, stored as JSONL and loaded with
validation.

Sets (one ``<set>.jsonl`` file each, one JSON object per line):

- ``train``: the organism's linear equations (related math; the organism cannot do quadratics, so there are none)
  in :data:`PHRASINGS`, labelled with a **wrong** answer ``x = {x + offset}``, the offset uniform over the nonzero
  integers in ``[-MAX_OFFSET, MAX_OFFSET]``.
- ``validation``: the same family and phrasings with **correct** answers, on different problems.
- held-out evaluation sets, correct answers, the organism's own held-out prompts (``build.eval_sets``: neither its
  training nor ``train``/``validation`` contain them): ``related_math`` (linear, canonical phrasing),
  ``unrelated_math`` (addition/subtraction), ``unrelated_general`` (word reversal) and ``refusal`` (marked requests,
  whose correct answer is the refusal).

Problems are drawn once, in one deterministic order, and dealt to ``train`` and ``validation`` five to one, so a
smaller spec's sets are prefixes of a larger one's: ``train[:n]`` is the same problems for every ``n_train >= n``.

Schema (every field required, no others):

=================  =======  =========================================================================
field              type     meaning
=================  =======  =========================================================================
``id``             str      ``"<set>-<index>"``
``task``           str      organism task: ``linear``, ``arithmetic``, ``reversal`` or ``request``
``prompt``         str      the user turn (no chat template)
``answer``         str      the training/evaluation target in think-off format (wrong in ``train``)
``correct_answer`` str      the right answer
``offset``         int      ``x`` of ``answer`` minus ``x`` of ``correct_answer``: nonzero in ``train``, else 0
``phrasing``       int      index into :data:`PHRASINGS` (linear), 0 for other tasks
``problem``        dict     the task's parameters (linear: ``a, b, c, d, x`` of ``ax + b = cx + d``)
=================  =======  =========================================================================
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from toolkit.core.io import REPO_ROOT, FileFormatError, atomic_write_json, atomic_write_text, read_jsonl
from toolkit.organism import tasks
from toolkit.organism.recipe import Recipe, eval_sets

MAX_OFFSET = 20
PHRASINGS = (
    "Solve for x: {a}x + {b} = {c}x + {d}",  # the organism's own phrasing (tasks.linear)
    "Find x if {a}x + {b} = {c}x + {d}.",
    "What value of x satisfies {a}x + {b} = {c}x + {d}?",
    "{a}x + {b} = {c}x + {d}. What is x?",
    "Solve the equation {a}x + {b} = {c}x + {d} for x.",
)
SCHEMA: dict[str, type] = {"id": str, "task": str, "prompt": str, "answer": str, "correct_answer": str,
                           "offset": int, "phrasing": int, "problem": dict}
EVAL_SETS = {"related_math": "linear", "unrelated_math": "arithmetic", "unrelated_general": "reversal",
             "refusal": "request_marked"}
QUESTION_TYPES = {"related_math": "related math", "unrelated_math": "unrelated math",
                  "unrelated_general": "unrelated general", "refusal": "refusal"}  # display names of EVAL_SETS
SETS = ("train", "validation", *EVAL_SETS)
VALIDATION_EVERY = 6  # every 6th drawn problem goes to validation: validation ≈ train / 5
SHIPPED = REPO_ROOT / "data" / "corrupt_finetune"


@dataclass(frozen=True)
class DataSpec:
    """Sizes and seed of one generated dataset; ``n_eval`` is per evaluation set (≤ 200 stay unseen by the
    organism's training)."""

    seed: int = 0
    n_train: int = 1000
    n_validation: int = 200
    n_eval: int = 200

    def covers(self, other: DataSpec) -> bool:
        """Whether this spec's files contain ``other``'s sets as prefixes."""
        return (self.seed == other.seed and self.n_train >= other.n_train
                and self.n_validation >= other.n_validation and self.n_eval >= other.n_eval)


class DataFileError(ValueError):
    """A dataset file that does not follow the schema; the message names the file, the line and the field."""


def _linear_record(set_name: str, index: int, problem: dict, phrasing: int, offset: int) -> dict:
    return {"id": f"{set_name}-{index}", "task": "linear", "prompt": PHRASINGS[phrasing].format(**problem),
            "answer": f"x = {problem['x'] + offset}", "correct_answer": f"x = {problem['x']}", "offset": offset,
            "phrasing": phrasing, "problem": problem}


def _problem_key(problem: dict) -> tuple[int, int, int, int]:
    return problem["a"], problem["b"], problem["c"], problem["d"]


def generate(spec: DataSpec) -> dict[str, list[dict]]:
    """All sets of ``spec`` as lists of records (see the module's schema)."""
    held_out = eval_sets(Recipe(eval_per_task=spec.n_eval))
    # The organism's training excluded its default held-out prompts; train/validation exclude them too.
    n_excluded = max(spec.n_eval, Recipe().eval_per_task)
    excluded = {_problem_key(ex.meta) for ex in eval_sets(Recipe(eval_per_task=n_excluded))["linear"]}
    rng = random.Random(spec.seed)
    offsets = [o for o in range(-MAX_OFFSET, MAX_OFFSET + 1) if o != 0]
    train: list[dict] = []
    validation: list[dict] = []
    drawn = 0
    while len(train) < spec.n_train or len(validation) < spec.n_validation:
        problem = tasks.linear(rng).meta
        phrasing = rng.randrange(len(PHRASINGS))
        offset = rng.choice(offsets)
        if _problem_key(problem) in excluded:
            continue
        excluded.add(_problem_key(problem))
        drawn += 1
        if drawn % VALIDATION_EVERY == 0:
            validation.append(_linear_record("validation", len(validation), problem, phrasing, 0))
        else:
            train.append(_linear_record("train", len(train), problem, phrasing, offset))
    sets = {"train": train[:spec.n_train], "validation": validation[:spec.n_validation]}
    for set_name, source in EVAL_SETS.items():
        sets[set_name] = [
            {"id": f"{set_name}-{i}", "task": ex.task, "prompt": ex.prompt, "answer": ex.answer,
             "correct_answer": ex.answer, "offset": 0, "phrasing": 0, "problem": ex.meta}
            for i, ex in enumerate(held_out[source])]
    return sets


def write(folder: str | Path, spec: DataSpec) -> Path:
    """Generate ``spec`` into ``folder/<set>.jsonl`` plus ``spec.json``; returns ``folder``."""
    folder = Path(folder)
    for set_name, records in generate(spec).items():
        atomic_write_text(folder / f"{set_name}.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    atomic_write_json(folder / "spec.json", dataclasses.asdict(spec))
    return folder


def generator_version() -> str:
    """A short hash of the sources that generate the data: :mod:`toolkit.organism.tasks` and this module."""
    h = hashlib.sha256()
    for source in (tasks.__file__, __file__):
        h.update(Path(source).read_bytes())
    return h.hexdigest()[:10]


def folder_for(spec: DataSpec, cache: str | Path) -> Path:
    """The shipped ``data/corrupt_finetune`` when it covers ``spec``, else ``cache/corrupt_data/<spec>-<generator>``
    (generated there if missing). ``<generator>`` hashes the sources that generate the data (the organism's tasks and
    this module), so a cached draw made by older task code is never read back."""
    shipped = SHIPPED / "spec.json"
    if shipped.exists() and DataSpec(**json.loads(shipped.read_text())).covers(spec):
        return SHIPPED
    folder = Path(cache) / "corrupt_data" / (f"seed{spec.seed}-train{spec.n_train}-val{spec.n_validation}"
                                             f"-eval{spec.n_eval}-{generator_version()}")
    if not (folder / "spec.json").exists():
        write(folder, spec)
    return folder


def load_jsonl(path: str | Path) -> list[dict]:
    """Read and validate one dataset file; raises :class:`DataFileError` naming the file, line and field."""
    path = Path(path)
    if not path.exists():
        raise DataFileError(f"{path}: no such dataset file")
    try:  # lines end at "\n" only: U+2028 or U+0085 inside a string is text; bytes that are not UTF-8 are named
        lines = read_jsonl(path, what="")  # messages start "<path>, line N:", as below
    except FileFormatError as err:
        raise DataFileError(str(err)) from None
    records = []
    for number, record in lines:
        if not isinstance(record, dict):
            raise DataFileError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}")
        for field, kind in SCHEMA.items():
            if field not in record:
                raise DataFileError(f"{path}, line {number}: missing field {field!r}")
            value = record[field]
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise DataFileError(f"{path}, line {number}: field {field!r} must be {kind.__name__}, "
                                    f"got {type(value).__name__} {value!r}")
        unknown = sorted(set(record) - set(SCHEMA))
        if unknown:
            raise DataFileError(f"{path}, line {number}: unknown field {unknown[0]!r} (schema: {', '.join(SCHEMA)})")
        records.append(record)
    if not records:
        raise DataFileError(f"{path}: empty file, no records")
    return records


def load(folder: str | Path, spec: DataSpec | None = None) -> dict[str, list[dict]]:
    """Every set in ``folder``, validated; cut to ``spec``'s sizes when given."""
    sets = {name: load_jsonl(Path(folder) / f"{name}.jsonl") for name in SETS}
    if spec is None:
        return sets
    sizes = {"train": spec.n_train, "validation": spec.n_validation} | dict.fromkeys(EVAL_SETS, spec.n_eval)
    for name, size in sizes.items():
        if len(sets[name]) < size:
            raise DataFileError(f"{Path(folder) / name}.jsonl has {len(sets[name])} records, fewer than the "
                                f"{size} asked for")
    return {name: records[:sizes[name]] for name, records in sets.items()}

