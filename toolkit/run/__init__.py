"""Running notebooks headlessly (papermill, with per-cell progress), their results JSON and figures, and the command
line.

Layer rule: run may import every layer but views (and dispatches the benchmarks); nothing in the toolkit imports run
except ``toolkit.__main__`` (notebooks import ``toolkit.run.results`` to save their numbers and figures).
"""
