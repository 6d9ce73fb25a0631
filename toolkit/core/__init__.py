"""Core: what every layer speaks — loading a model, the hook vocabulary (sites and four operations), chat formatting
and answer modes, generation, answers, head and neuron sets, statistics, the cache, atomic IO, progress bars.

Layer rule: core imports nothing from the toolkit outside ``toolkit.core`` (the organism registers with it:
:mod:`toolkit.core.specs`); it never draws, never trains, never knows a notebook.
"""
