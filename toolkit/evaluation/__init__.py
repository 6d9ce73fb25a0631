"""Evaluation: behaviour (generate, extract, grade — for any model, prompt set and mode) and causal tests (an
intervention on a set of sites against its placebos, with paired statistics).

Layer rule: evaluation imports core, methods and organism; never training, studies or views. It does not draw.
"""
