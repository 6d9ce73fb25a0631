"""The embedded model organism: a small Qwen3 (GQA) trained from scratch on synthetic tasks.

- :mod:`toolkit.organism.tokenizer`: character-level tokenizer and Qwen3-like chat template.
- :mod:`toolkit.organism.tasks`: deterministic task generators with think-on scratchpads.
- :mod:`toolkit.organism.build`: the recipe, training, evaluation and report.
"""

from toolkit.organism.build import Recipe, eval_sets, evaluate, format_report, recipe_hash

__all__ = ["Recipe", "eval_sets", "evaluate", "format_report", "recipe_hash", "ensure_built"]


def ensure_built() -> None:
    """Build both checkpoints into the data folder if either is missing (takes ~30 min on 2 cores)."""
    from toolkit.core.models import data_dir
    from toolkit.organism.build import build

    if not all((data_dir() / name / "config.json").exists() for name in ("organism", "organism-base")):
        print(format_report(build(data_dir(), Recipe())))
