"""Slow, readable references for the fast methods: the tests check the fast paths against them, and a reader can
step through them to see the method without the optimisations.

Layer rule: references import core, organism and methods only; no method (nor evaluation, nor a study) imports a
reference: only the tests, the course and the benchmarks do.
"""
