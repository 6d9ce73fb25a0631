"""Model profiles: named sets of notebook parameters that give the papers' settings for a real model.

``python -m toolkit run 03 --profile qwen3-0.6b`` runs notebook 03 with the profile's parameters for it, and any
``-p KEY=VALUE`` over them (:func:`profile_params`). In JupyterLab, set the notebook's ``profile`` parameter: the
line after its parameters cell (:func:`apply_profile`) sets the profile's values of every parameter still at the
default the notebook declares; a parameter you changed keeps your value (a value you set *equal* to the default
cannot be told from the default, and takes the profile's). ``python -m toolkit run --list-profiles`` lists them.

A :class:`Profile` has ``common`` parameters (model, grader, judge: given to every notebook that declares them) and
``notebooks`` (per notebook number: only parameters that notebook declares, typed like its defaults; checked by
``tests/test_profiles.py``), the notebooks it does not apply to (``skip``: Qwen2.5-Math has no think mode, so not
notebook 05), and each value's source in ``sources``. ``gpu-smoke`` takes its model at run time (``-p model=...``;
``base_model`` and ``teacher`` follow it unless given).

Sources: the Qwen3 technical report (arXiv 2505.09388) and model cards (sampling: thinking temperature 0.6, top-p 0.95,
top-k 20; non-thinking 0.7, 0.8, 20: :data:`QWEN3_SAMPLING`); "Thinking Sparks" (GRPO on Qwen2.5-Math-1.5B-Instruct:
learning rate 1e-6, 16 generations, warmup 0.1, SFT 4e-5 with warmup 0.03, completions of 1024 tokens, 5000 edges);
the budgets of think-on answers are ours (Qwen3 thinks for hundreds to thousands of tokens on these problems).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from toolkit.benchmarks.smoke import SMOKE_PARAMS
from toolkit.run.params import RunnerError, coerce_param, notebook_parameters

QWEN3_SAMPLING = {"thinking": {"temperature": 0.6, "top_p": 0.95, "top_k": 20},
                  "non-thinking": {"temperature": 0.7, "top_p": 0.8, "top_k": 20}}  # Qwen3 model cards
FOLLOW_MODEL = ("base_model", "teacher")  # a profile whose model is given at run time: these take it too
CARD = "Qwen3 model card / technical report (arXiv 2505.09388)"
SPARKS = "Thinking Sparks (GRPO on Qwen2.5-Math-1.5B-Instruct)"


@dataclass(frozen=True)
class Profile:
    """One named set of parameters (module docstring). ``model`` None: given at run time (``-p model=...``)."""

    name: str
    model: str | None
    grader: str
    judge: str
    notes: str
    notebooks: dict[str, dict] = field(default_factory=dict)  # "03" -> {parameter: value}
    skip: tuple[str, ...] = ()  # notebook numbers it does not apply to
    model_at_run_time: bool = False  # -p model=... is required (and base_model, teacher follow it)
    defaults: bool = False  # the notebooks' own defaults: no overrides (grader and judge are what "auto" gives)
    sources: dict[str, str] = field(default_factory=dict)  # parameter -> where its value comes from

    @property
    def common(self) -> dict:
        """The parameters every notebook that declares them gets (none for the defaults' profile)."""
        if self.defaults:
            return {}
        return {**({"model": self.model} if self.model else {}), "grader": self.grader, "judge": self.judge}

    def for_notebook(self, stem: str) -> dict:
        """The profile's parameters for notebook ``stem`` (``"03_eap_ig"``), before typing and filtering."""
        return {**self.common, **self.notebooks.get(stem[:2], {})}


def _qwen3(size: str, batch: int) -> Profile:
    hub = f"Qwen/Qwen3-{size}"
    think, off = 4096, 512  # think-on answers need thousands of tokens; think-off ones a few hundred
    return Profile(
        f"qwen3-{size.lower()}", hub, "math", "phrases",
        f"{hub}, hybrid thinking; the papers' settings where they give them, budgets for Qwen3's long think-on "
        f"answers ({think} new tokens on, {off} off), batch sizes for one 80 GB GPU",
        notebooks={
            "00": {"compare_base": False},
            "01": {"max_new_tokens": off, "think_on_tokens": think},
            "02": {"max_new_tokens": 64, "think_tokens": think, "heatmap_thinking": False, "batch_size": batch},
            "03": {"base_model": f"{hub}-Base", "top_n": 5000, "max_new_tokens": off, "batch_size": max(1, batch // 4)},
            "04": {"model": f"{hub}-Base", "teacher": hub, "grpo_lr": 1e-6, "grpo_warmup": 0.1, "sft_lr": 4e-5,
                   "sft_warmup": 0.03, "num_generations": 16, "temperature": 1.0, "max_completion_length": think,
                   "save_every": 100, "steps": 1000, "top_n": 5000},
            "05": {**QWEN3_SAMPLING["thinking"], "max_new_tokens_think": think, "max_new_tokens_off": off,
                   "top_n": 1000, "top_n_sweep": [250, 500, 1000, 2000, 5000]},
            "06": {"learning_rates": [5e-6, 1e-5, 2e-5], "steps": 200, "snapshots": [50, 100, 200],
                   "batch_size": max(2, batch // 4)},
        },
        sources={"model": CARD, "temperature": CARD + " (thinking mode)", "top_p": CARD, "top_k": CARD,
                 "max_new_tokens_think": "ours: Qwen3 think-on answers run to thousands of tokens (the card "
                                         "recommends up to 32768 output tokens)",
                 "grpo_lr": SPARKS, "sft_lr": SPARKS, "num_generations": SPARKS, "grpo_warmup": SPARKS,
                 "sft_warmup": SPARKS, "save_every": SPARKS, "top_n": SPARKS + " (5000 edges)",
                 "learning_rates": "ours: usual full fine-tuning rates of 1-8B models (When Thinking Backfires' "
                                   "rates are not reproduced here)", "base_model": CARD + " (the -Base checkpoints)"})


PROFILES: dict[str, Profile] = {p.name: p for p in [
    Profile("organism", None, "strict", "organism", "the notebooks' defaults: the embedded model organism "
            "(exact answers, the organism's fixed refusal); no overrides", defaults=True),
    *(_qwen3(size, batch) for size, batch in (("0.6B", 64), ("1.7B", 64), ("4B", 32), ("8B", 16))),
    Profile("qwen2.5-math-1.5b-instruct", "Qwen/Qwen2.5-Math-1.5B-Instruct", "math", "phrases",
            "Thinking Sparks' GRPO model (notebook 04's paper settings); no think mode, so notebook 05 does not apply",
            notebooks={"01": {"max_new_tokens": 1024, "think_on_tokens": 0},
                       "02": {"max_new_tokens": 64, "heatmap_thinking": False, "batch_size": 32},
                       "03": {"base_model": "Qwen/Qwen2.5-Math-1.5B", "top_n": 5000, "max_new_tokens": 1024,
                              "batch_size": 8},
                       "04": {"teacher": "Qwen/Qwen2.5-Math-7B-Instruct", "grpo_lr": 1e-6, "grpo_warmup": 0.1,
                              "sft_lr": 4e-5, "sft_warmup": 0.03, "num_generations": 16, "max_completion_length": 1024,
                              "save_every": 100, "steps": 1000, "top_n": 5000},
                       "06": {"learning_rates": [5e-6, 1e-5, 2e-5], "steps": 200, "snapshots": [50, 100, 200],
                              "batch_size": 8}},
            skip=("05",), sources={"model": SPARKS, "grpo_lr": SPARKS, "sft_lr": SPARKS, "num_generations": SPARKS,
                                   "max_completion_length": SPARKS, "top_n": SPARKS}),
    Profile("gpu-smoke", None, "math", "phrases",
            "a random-init Qwen3-0.6B-shaped model folder with the real tokenizer (-p model=FOLDER), tiny budgets: "
            "checks that every notebook runs on a GPU, not what it finds",
            notebooks=SMOKE_PARAMS, model_at_run_time=True),
]}


def get(name: str) -> Profile:
    """The profile ``name``, or a :class:`~toolkit.run.params.RunnerError` listing the profiles."""
    if name not in PROFILES:
        raise RunnerError(f"unknown profile {name!r}; the profiles are: {', '.join(PROFILES)}")
    return PROFILES[name]


def listing() -> str:
    """One line per profile: name, model, grader, judge, notes (``--list-profiles``)."""
    def model(p: Profile) -> str:
        return p.model or ("organism" if p.defaults else "(-p model=...)")

    return "\n".join(f"{p.name:28s} {model(p):34s} grader={p.grader:7s} judge={p.judge:9s} {p.notes}"
                     for p in PROFILES.values())


def profile_params(name: str, notebook: Path, given: dict) -> dict:
    """Notebook ``notebook``'s parameters under profile ``name``: the profile's values of the parameters it declares,
    typed by its defaults, then ``given`` (``-p``) over them; a :class:`RunnerError` for a profile that does not apply
    to the notebook, or one that needs ``-p model=...`` without it."""
    profile = get(name)
    if notebook.stem[:2] in profile.skip:
        raise RunnerError(f"profile {name!r} does not apply to {notebook.stem} ({profile.notes}); leave it out")
    if profile.model_at_run_time and "model" not in given:
        raise RunnerError(f"profile {name!r} takes its model at run time: give -p model=FOLDER")
    declared = notebook_parameters(notebook)
    values = profile.for_notebook(notebook.stem)
    if profile.model_at_run_time and "model" in given:
        values.update({k: given["model"] for k in FOLLOW_MODEL if k not in values})
    out = {k: coerce_param(notebook.stem, k, v, declared[k]) for k, v in values.items() if k in declared}
    return {**out, **given}


def apply_profile(profile: str, notebook: str, namespace: dict, notebooks_dir: str | Path | None = None) -> dict:
    """The parameters notebook ``notebook`` (its stem) should change under ``profile`` (``""``: none): the profile's
    value of every parameter whose value in ``namespace`` (the notebook's globals) is still the notebook's declared
    default. Use: ``globals().update(apply_profile(profile, "03_eap_ig", globals()))``. Prints what it set."""
    if not profile:
        return {}
    from toolkit.run.runner import NOTEBOOKS_DIR

    path = Path(notebooks_dir or NOTEBOOKS_DIR) / f"{notebook}.ipynb"
    declared = notebook_parameters(path)
    explicit = {k: namespace[k] for k in declared if k in namespace and namespace[k] != declared[k] and k != "profile"}
    changed = {k: v for k, v in profile_params(profile, path, explicit).items() if k not in explicit}
    if changed:
        print(f"profile {profile}: " + ", ".join(f"{k} = {v!r}" for k, v in changed.items()))
    return changed
