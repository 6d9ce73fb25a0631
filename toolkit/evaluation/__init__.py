"""Evaluation: behaviour (generate, extract, grade — for any model, prompt set and mode) and causal tests (an
intervention on a set of sites against its placebos, with paired statistics), the rigor machinery (claims, nulls,
stability, weight noise), and the tools several studies share: head-set tests against every same-size placebo set
(``placebo_sets``) and EAP-IG circuits of a run's checkpoints (``snapshots``).

Layer rule: evaluation imports core, methods and organism; never training, references, studies or views. It does not
draw.
"""
