"""The outcome of a CMAP run (:class:`CMAPResult`) and its metrics.

Free-running runs give behaviour per site (:meth:`CMAPResult.summary`: final-answer accuracy, output length, whether
the patched output equals the corrupted model's). Teacher-forced runs give the per-step corruption transfer score

    CTS_t = (ΔL_patched − ΔL_clean) / (ΔL_corrupted − ΔL_clean),  ΔL = logit[c*_t] − logit[k*_t],

where c*_t and k*_t are the corrupted and the clean model's top tokens at step t on the shared trajectory. Steps whose
denominator is below ``min_gap`` (default :data:`MIN_GAP` logits) are undefined (NaN) and left out of averages
(:meth:`CMAPResult.cts_coverage` reports how many count). See :mod:`toolkit.methods.cmap.engine` for the run itself
and ``docs/methods.md`` ("CMAP" section) for the conventions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from toolkit.core.grading import grade
from toolkit.core.interventions import Site

MIN_GAP = 0.5


def until_eos(ids: Sequence[int], eos: int, keep_eos: bool = False) -> list[int]:
    """``ids`` up to the first ``eos`` (included with ``keep_eos``); all of them if there is none."""
    ids = list(ids)
    if eos in ids:
        return ids[:ids.index(eos) + (1 if keep_eos else 0)]
    return ids


@dataclass
class CMAPResult:
    """The outcome of :func:`toolkit.methods.cmap.run` for ``prompts`` × ``sites``.

    Token lists hold the new tokens of each generation up to and including the end token (if one was produced).
    Free-running: ``clean_tokens[b]``, ``corrupted_tokens[b]``, ``patched_tokens[b][s]``. Teacher-forced: every row
    followed ``trajectory[b]`` (the clean or corrupted tokens), ``patched_tokens`` is None, and the per-step arrays
    ``delta_*`` (ΔL), ``top_*`` (argmax tokens) and ``valid`` ([B, T], steps inside the trajectory) are set.
    """

    prompts: list[str]
    sites: list[Site]
    mode: str
    teacher_forcing: str | None
    clean_tokens: list[list[int]]
    corrupted_tokens: list[list[int]]
    patched_tokens: list[list[list[int]]] | None
    tokenizer: object = field(repr=False)
    eos: int
    trajectory: list[list[int]] | None = None
    valid: np.ndarray | None = None
    delta_clean: np.ndarray | None = None  # [B, T]
    delta_corrupted: np.ndarray | None = None  # [B, T]
    delta_patched: np.ndarray | None = None  # [B, S, T]
    top_clean: np.ndarray | None = None  # [B, T]
    top_corrupted: np.ndarray | None = None  # [B, T]
    top_patched: np.ndarray | None = None  # [B, S, T]
    seconds: float = 0.0
    grader: str = "strict"  # how final answers are graded (toolkit.core.grading; from the clean model)

    # -- texts and behaviour (free-running) --

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(until_eos(ids, self.eos), skip_special_tokens=True)

    def clean_texts(self) -> list[str]:
        return [self.decode(t) for t in self.clean_tokens]

    def corrupted_texts(self) -> list[str]:
        return [self.decode(t) for t in self.corrupted_tokens]

    def patched_texts(self) -> list[list[str]]:
        """``[b][s]`` decoded patched generations (free-running runs only)."""
        self._need_free("patched texts")
        return [[self.decode(t) for t in row] for row in self.patched_tokens]

    def _need_free(self, what: str) -> None:
        if self.patched_tokens is None:
            raise ValueError(f"{what} need a free-running run; this one was teacher-forced on the "
                             f"{self.teacher_forcing} trajectory")

    def _need_forced(self, what: str) -> None:
        if self.delta_patched is None:
            raise ValueError(f"{what} needs a teacher-forced run (run(..., teacher_forcing='clean'))")

    def summary(self, correct_answers: Sequence[str] | None = None) -> dict[str, dict]:
        """Per site label (plus ``"clean"`` and ``"corrupted"``): ``length`` (mean new tokens before the end
        token), ``equals_corrupted`` (fraction of prompts whose output equals the corrupted model's), ``transfer``
        (the same fraction among the prompts where the clean and corrupted outputs differ; NaN if there are none),
        and with ``correct_answers`` (one per prompt) ``accuracy`` of the final answer (graded by ``self.grader``)."""
        self._need_free("summaries")
        if correct_answers is not None and len(correct_answers) != len(self.prompts):
            raise ValueError(f"{len(correct_answers)} correct answers for {len(self.prompts)} prompts")
        corrupted = self.corrupted_texts()
        differ = np.array([a != b for a, b in zip(self.clean_texts(), corrupted)])
        lengths = self.lengths()
        out = {}
        for label, toks in self._columns().items():
            texts = [self.decode(t) for t in toks]
            same = np.array([a == b for a, b in zip(texts, corrupted)])
            entry = {"length": float(lengths[label].mean()),
                     "equals_corrupted": float(same.mean()),
                     "transfer": float(same[differ].mean()) if differ.any() else math.nan}
            if correct_answers is not None:
                entry["accuracy"] = float(np.mean([grade(c, x, self.grader).correct
                                                   for x, c in zip(texts, correct_answers)]))
            out[label] = entry
        return out

    def lengths(self) -> dict[str, np.ndarray]:
        """Per prompt, the new tokens before the end token: ``"clean"``, ``"corrupted"`` and each site label
        (free-running runs only)."""
        self._need_free("lengths")
        return {label: np.array([len(until_eos(t, self.eos)) for t in toks], dtype=float)
                for label, toks in self._columns().items()}

    def _columns(self) -> dict[str, list[list[int]]]:
        """Token lists per column: ``"clean"``, ``"corrupted"`` and each site label (free-running runs)."""
        columns = {"clean": self.clean_tokens, "corrupted": self.corrupted_tokens}
        return columns | {s.label: [row[i] for row in self.patched_tokens] for i, s in enumerate(self.sites)}

    # -- per-step metrics (teacher-forced) --

    def cts(self, min_gap: float = MIN_GAP) -> np.ndarray:
        """``[B, S, T]`` corruption transfer score per prompt, site and step; NaN where the step is past the
        trajectory's end or the clean and corrupted models' preference differs by less than ``min_gap`` logits
        (including steps where both pick the same token)."""
        self._need_forced("CTS")
        denom = self.delta_corrupted - self.delta_clean  # [B, T], >= 0
        ok = self.valid & (denom >= min_gap)
        with np.errstate(invalid="ignore", divide="ignore"):
            score = (self.delta_patched - self.delta_clean[:, None]) / denom[:, None]  # [B, S, T]
        return np.where(ok[:, None], score, np.nan)

    def cts_coverage(self, min_gap: float = MIN_GAP) -> float:
        """The fraction of valid steps where CTS is defined (the models disagree by at least ``min_gap``)."""
        self._need_forced("CTS coverage")
        denom = self.delta_corrupted - self.delta_clean
        return float((self.valid & (denom >= min_gap)).sum() / max(1, self.valid.sum()))

    def mean_cts(self, min_gap: float = MIN_GAP) -> np.ndarray:
        """``[S]`` CTS per site averaged over every defined (prompt, step)."""
        score = self.cts(min_gap)
        counts = np.isfinite(score).sum(axis=(0, 2))
        return np.where(counts > 0, np.nansum(score, axis=(0, 2)) / np.maximum(counts, 1), np.nan)

    def cts_sums(self, min_gap: float = MIN_GAP) -> tuple[np.ndarray, np.ndarray]:
        """Per prompt, summed over its steps where CTS is defined: the numerator ``[B, S]`` (ΔL_patched − ΔL_clean)
        and the denominator ``[B]`` (ΔL_corrupted − ΔL_clean). Their ratio over any set of prompts is the pooled CTS
        of those prompts (:meth:`pooled_cts`)."""
        self._need_forced("CTS")
        denom = self.delta_corrupted - self.delta_clean
        ok = self.valid & (denom >= min_gap)
        num = np.where(ok[:, None], self.delta_patched - self.delta_clean[:, None], 0.0).sum(axis=2)
        return num, np.where(ok, denom, 0.0).sum(axis=1)

    def pooled_cts(self, min_gap: float = MIN_GAP) -> np.ndarray:
        """``[S]`` CTS as a ratio of sums over every defined (prompt, step): how far the patch moves the summed
        logit gap toward the corrupted model's. Unlike :meth:`mean_cts` (a mean of ratios), steps where the two
        models barely disagree cannot dominate it. NaN where no step is defined."""
        num, den = self.cts_sums(min_gap)
        total = den.sum()
        return num.sum(axis=0) / total if total > 0 else np.full(len(self.sites), np.nan)

    def prompt_cts(self, min_gap: float = MIN_GAP) -> np.ndarray:
        """``[B, S]`` pooled CTS of each prompt on its own (NaN for prompts with no defined step): the spread of
        the corruption's location across prompts."""
        num, den = self.cts_sums(min_gap)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den[:, None] > 0, num / den[:, None], np.nan)

    def median_cts(self, min_gap: float = MIN_GAP) -> np.ndarray:
        """``[S]`` median of the per-step CTS over every defined (prompt, step) (NaN where none)."""
        score = self.cts(min_gap).transpose(1, 0, 2).reshape(len(self.sites), -1)
        return np.array([np.median(row[np.isfinite(row)]) if np.isfinite(row).any() else np.nan for row in score])

    def step_cts(self, min_gap: float = MIN_GAP) -> np.ndarray:
        """``[S, T]`` CTS per site and step averaged over prompts (NaN where no prompt defines it)."""
        score = self.cts(min_gap)
        counts = np.isfinite(score).sum(axis=0)
        return np.where(counts > 0, np.nansum(score, axis=0) / np.maximum(counts, 1), np.nan)

    def head_grid(self, min_gap: float = MIN_GAP) -> tuple[list[int], list[int], np.ndarray]:
        """From a teacher-forced run over single-head sites: (layers, heads, [layers, heads] pooled CTS; NaN for
        heads that were not swept)."""
        means = self.pooled_cts(min_gap)
        layers = sorted({s.layer for s in self.sites if s.component == "head"})
        heads = sorted({h for s in self.sites if s.component == "head" for h in s.heads})
        grid = np.full((len(layers), len(heads)), np.nan)
        for s, m in zip(self.sites, means):
            if s.component == "head" and len(s.heads) == 1:
                grid[layers.index(s.layer), heads.index(s.heads[0])] = m
        return layers, heads, grid
