"""Studies: one subpackage per notebook, named after it — ``organism`` (00), ``corrupt`` (01), ``cmap`` (02),
``emergent`` (03), ``grpo_dynamics`` (04), ``think_on_off`` (05), ``rim`` (06). Each holds its notebook's data
choices and orchestration (which models, which sets, which sweeps, what is cached) in its ``__init__`` and its claims
in ``claims``, returning typed results for the views and the notebook's claims.

Layer rule: studies may import core, organism, training, methods and evaluation; never references, the course or
views. A study never imports another study: what two studies share lives a floor lower (the corrupted donor of 01
and 02 in :mod:`toolkit.training.corrupt`; placebo head sets and checkpoint circuits in evaluation). They do not
draw.
"""
