"""Methods: reusable algorithms a researcher imports into their own script — EAP / EAP-IG circuits, cross-model
activation patching, head dynamics over checkpoints, RIM measures.

Layer rule: methods import only ``toolkit.core`` and ``toolkit.organism`` (never training or a reference). They never
draw (no matplotlib, ipywidgets or HTML), never train, and know no notebook. They return typed results (dataclasses,
NamedTuples).
"""
