"""The embedded model organism: a small Qwen3 (GQA) trained from scratch on synthetic tasks.

- :mod:`toolkit.organism.tokenizer`: character-level tokenizer and Qwen3-like chat template.
- :mod:`toolkit.organism.tasks`: deterministic task generators with think-on scratchpads.
- :mod:`toolkit.organism.recipe`: the recipe, its hash and the held-out sets.
- :mod:`toolkit.organism.build`: training (both checkpoints, resumable, deterministic).
- :mod:`toolkit.organism.probes`: held-out prompt pools that later training excludes.

Layer rule: the organism sits beside core (rank 0) and imports only core. Grading its generations is evaluation's
job: the held-out report of a build comes from :mod:`toolkit.studies.organism` (``build_organism``, ``evaluate``,
``ensure_built``).
"""

from toolkit.organism.recipe import Recipe, eval_sets, recipe_hash

__all__ = ["Recipe", "eval_sets", "recipe_hash"]
