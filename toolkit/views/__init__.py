"""Views: every figure, table and ipywidgets explorer. Views take study and method results and draw them.

Layer rule: views may import core, organism, training, methods, evaluation and studies; nothing in the toolkit
imports views — only notebooks do.
"""
