"""reasoning-circuits: how post-training changes the circuits of small reasoning language models.

The public surface, for a researcher's own script::

    import toolkit as tk

    loaded = tk.load("organism")                      # or a local folder, or a Qwen2/Qwen3 hub name on a GPU
    with tk.ablate(loaded, tk.head(2, 1)):            # the hook vocabulary: sites and four operations
        b = tk.behave(loaded, prompts)                # generate and grade (behaviour)
    scores = tk.eap.attribute(loaded, pairs)          # EAP / EAP-IG circuits
    result = tk.cmap.run(clean, corrupted, prompts, sites)   # cross-model activation patching

One model argument: the ``LoadedModel`` that ``load`` returns. ``behave``, ``eap`` and ``cmap`` also take a spec string
(and load it), the four operations also take its ``bridge``; any other kind is a ``TypeError`` naming the parameter
(:func:`toolkit.core.models.as_loaded`, :func:`toolkit.core.models.bridge_of`).

The package is layered, and each layer's ``__init__`` states its rule:
``core`` → ``training``, ``methods`` → ``evaluation`` → ``studies`` → ``views`` → ``run``
(``tests/test_layering.py`` enforces the direction). Names here load lazily, so ``python -m toolkit`` starts fast;
only the organism package is imported at once, light, so that it registers its checks with core.
"""

from __future__ import annotations

import importlib

from toolkit.core.versions import check_versions

check_versions()  # before any dependency is imported: one clear line for an unsupported version

import toolkit.organism  # noqa: E402, F401 -- registers the organism's recipe check with core (toolkit.core.specs)

_EXPORTS = {
    # loading a model
    "load": "toolkit.core.models", "LoadedModel": "toolkit.core.models", "ModelLoadError": "toolkit.core.models",
    # the hook vocabulary: sites ...
    "Site": "toolkit.core.interventions", "SiteError": "toolkit.core.interventions",
    "head": "toolkit.core.interventions", "attn": "toolkit.core.interventions", "mlp": "toolkit.core.interventions",
    "resid": "toolkit.core.interventions", "neurons": "toolkit.core.interventions",
    "head_sites": "toolkit.core.units", "neuron_sites": "toolkit.core.units",
    # ... and the four operations
    "record": "toolkit.core.interventions", "patch": "toolkit.core.interventions",
    "ablate": "toolkit.core.interventions", "scale": "toolkit.core.interventions",
    # generation and behaviour
    "generate": "toolkit.core.generation", "SamplingConfig": "toolkit.core.generation",
    "behave": "toolkit.evaluation.behaviour",
    # grading answers and judging refusals (the organism's rules, and rules for real models' outputs)
    "grade": "toolkit.core.grading", "Grade": "toolkit.core.grading", "judge_refusal": "toolkit.core.refusal",
}
_NAMESPACES = {"eap": "toolkit.methods.eap", "cmap": "toolkit.methods.cmap"}

__all__ = sorted([*_EXPORTS, *_NAMESPACES])


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _NAMESPACES:
        value = importlib.import_module(_NAMESPACES[name])
    else:
        raise AttributeError(f"module 'toolkit' has no attribute {name!r}; the public names are {', '.join(__all__)}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
