"""Training: TRL runs (corrupted and reasoning SFT, GRPO), their callbacks, checkpoints, and reuse by config hash.

Layer rule: training imports only ``toolkit.core`` and ``toolkit.organism`` (never methods or evaluation). It never
draws, never evaluates behaviour beyond what a trainer logs, and knows no notebook. Methods never import training.
"""
