"""The embedded model organism: a small Qwen3 (GQA) trained from scratch on synthetic tasks.

- :mod:`toolkit.organism.tokenizer`: character-level tokenizer and Qwen3-like chat template.
- :mod:`toolkit.organism.tasks`: deterministic task generators with think-on scratchpads.
- :mod:`toolkit.organism.recipe`: the recipe, its hash and the held-out sets.
- :mod:`toolkit.organism.build`: training (both checkpoints, resumable, deterministic).
- :mod:`toolkit.organism.probes`: held-out prompt pools that later training excludes.
- :mod:`toolkit.organism.rebuild`: a corrupted problem rebuilt with its reference completion.
- :mod:`toolkit.organism.tiny`: tiny random Qwen2 / Qwen3 folders with the organism's tokenizer, for tests.

Importing this package registers :func:`check_recipe` with core (:func:`toolkit.core.specs.register_organism_check`),
so loading ``"organism"`` warns when the shipped weights were built by another recipe; ``import toolkit`` imports it.

Layer rule: the organism sits beside core (rank 0) and imports only core; core never imports it. Grading its
generations is evaluation's job: the held-out report of a build comes from :mod:`toolkit.studies.organism`
(``build_organism``, ``evaluate``, ``ensure_built``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from toolkit.core.specs import register_organism_check

_WARNED: set[tuple[str, str | None, str]] = set()  # (folder, stored hash, current hash) already reported


def check_recipe(path: Path, seed: int = 0) -> None:
    """Warn when the organism folder ``path`` (build ``seed``) was built by another recipe than the current code's:
    once per folder and pair of hashes in a process, however many times a load resolves the folder."""
    from toolkit.organism.recipe import Recipe, recipe_hash

    meta_file = path / "recipe.json"
    stored = json.loads(meta_file.read_text()).get("recipe_hash") if meta_file.exists() else None
    current = recipe_hash(Recipe(seed=seed))
    if stored != current and (key := (str(path.resolve()), stored, current)) not in _WARNED:
        _WARNED.add(key)
        warnings.warn(
            f"{path.name}: the shipped weights were built by recipe {stored}, but the current recipe is {current} "
            f"(its knobs, task and tokenizer sources, and the build's training code); rebuild with "
            f"`python -m toolkit build-organism{f' --seed {seed}' if seed else ''}` to match the code",
            stacklevel=4)


register_organism_check(check_recipe)


def grading_spec(tokenizer, spec: str) -> str:
    """The spec that ``"auto"`` grading and refusal judging read (:func:`toolkit.core.grading.resolve_grader`):
    ``"organism"`` for a model with the organism's character tokenizer (a model being built or fine-tuned from it,
    whatever its folder), else ``spec``."""
    from toolkit.organism.tokenizer import CHAT_TEMPLATE

    return "organism" if getattr(tokenizer, "chat_template", None) == CHAT_TEMPLATE else spec
