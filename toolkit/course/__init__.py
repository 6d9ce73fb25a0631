"""The course: the exercise notebooks' lessons (``notebooks/exercises/``): for each, the data its checks run on and one
check per exercise, comparing the learner's function with the toolkit's own implementation or reference through
:func:`toolkit.course.checks.check`.

- :mod:`~toolkit.course.corrupt` — notebook 01: a completion's answer and format, a corrupted label, one SFT
  example with the prompt masked, the completion-only loss;
- :mod:`~toolkit.course.cmap` — notebook 02: one patched step, autoregressive CMAP, ΔL and the corruption
  transfer score;
- :mod:`~toolkit.course.eap_ig` — notebook 03: one edge's EAP score, the Riemann sum of EAP-IG, GQA k/v
  grouping, faithfulness of the full and the empty graph;
- :mod:`~toolkit.course.grpo` — notebook 04: GRPO's group-relative advantage, emergent / maintained / lost
  heads, cohorts and survival across checkpoints, emergent heads against the base-vs-itself null;
- :mod:`~toolkit.course.think_on_off` — notebook 05: unbiased pass@k, success@k over orders, a bootstrap
  interval over problems, a head-ablation hook at ``attn.hook_z``;
- :mod:`~toolkit.course.rim` — notebook 06: the CoT / think / rest spans at the first response token, span
  masses, a refusal head's shift, counterfactual safety-neuron selection, RAS on a common scale.

Every ``check_*`` takes the learner's function first and the lesson's data second and returns a
:class:`~toolkit.course.checks.CheckResult`; it never raises for the learner's faults (the check library:
:mod:`toolkit.course.checks`).

Layer rule: the course may import every layer up to the studies, and the references it checks learners against; it
never draws. Nothing in the toolkit imports it but ``toolkit.run`` (which generates the exercise notebooks).
"""
