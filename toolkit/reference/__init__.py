"""Slow, readable references for the fast methods: the tests check the fast paths against them, and a reader can
step through them to see the method without the optimisations.

Layer rule: references import core and methods only; no method imports a reference.
"""
