"""Studies: one module per notebook — its data choices and orchestration (which models, which sets, which sweeps,
what is cached), returning typed results for the views and the notebook's claims.

Layer rule: studies may import core, training, methods and evaluation; never views. They do not draw.
"""
