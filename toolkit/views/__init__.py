"""Views: every figure, table and ipywidgets explorer. Views take study and method results and draw them.

Layer rule: views may import any layer below; nothing in the toolkit imports views — only notebooks do.
"""
