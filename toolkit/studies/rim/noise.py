"""RIM study: the untargeted-change null. For every fine-tuned checkpoint, a copy of the base model with Gaussian weight
noise whose KL(base ‖ noisy) on the reasoning probes matches the checkpoint's KL(base ‖ tuned)
(:func:`toolkit.evaluation.weight_noise.match_noise`; the same positions as the rows' ``kl``: the response
predictions of the teacher-forced reasoning traces). Each noisy model is measured exactly like a checkpoint
(:func:`~toolkit.studies.rim.checkpoints.measure_checkpoint`), one row each, so "X happens after reasoning
fine-tuning" can be read beside "X happens after any change of that size". Noise draw ``i`` (checkpoint ``i``) uses
seed ``1000·seed + i``; a checkpoint with KL 0 gets σ = 0 (the base model itself).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from toolkit.core import models
from toolkit.core.models import LoadedModel
from toolkit.core.progress import progress, quiet_library_bars
from toolkit.evaluation import weight_noise
from toolkit.methods.rim import ForcedSequence
from toolkit.studies.rim.checkpoints import Measurement, measure_checkpoint, measurement_row
from toolkit.studies.rim.probes import Probes


def kl_reference(seqs: Sequence[ForcedSequence], *, pad_id: int = 0, batch_size: int = 32) -> list[dict]:
    """Left-padded batches of the sequences with ``loss_mask`` on the positions that predict the response tokens
    (``response_start − 1 … T − 2``), for :func:`toolkit.evaluation.weight_noise.mean_kl`."""
    out = []
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start:start + batch_size]
        width = max(len(s.ids) for s in chunk)
        ids = torch.full((len(chunk), width), int(pad_id), dtype=torch.long)
        mask, loss = torch.zeros_like(ids), torch.zeros_like(ids)
        for i, s in enumerate(chunk):
            off = width - len(s.ids)
            ids[i, off:] = torch.tensor(s.ids)
            mask[i, off:] = 1
            loss[i, off + s.response_start - 1:width - 1] = 1
        out.append({"input_ids": ids, "attention_mask": mask, "loss_mask": loss})
    return out


def noise_rows(base: LoadedModel, tuned_rows: Sequence[dict], base_measurement: Measurement, probes: Probes,
               neuron_sets: dict[str, list], *, seed: int = 0, tol: float = 0.1, device: str = "auto"
               ) -> tuple[list[dict], dict[str, Measurement]]:
    """One KL-matched noisy model per fine-tuned row (module docstring): ``(rows, measurements by label)``; each row
    has the checkpoint row's ``label`` + ``"~noise"``, its ``run`` and ``lr`` (so it pairs with its checkpoint), the
    ``sigma`` found, ``target_kl`` and ``matched`` (KL within ``tol``), and every measure of a checkpoint row."""
    reference = kl_reference(probes.reasoning, pad_id=base.tokenizer.pad_token_id or 0)
    rows, measured = [], {}
    for i, tuned in enumerate(progress(tuned_rows, desc="KL-matched noise")):
        if tuned["kl"] > 0:
            match = weight_noise.match_noise(base.hf, tuned["kl"], reference, seed=1000 * seed + i, tol=tol,
                                      keep_model=False)
            sigma, matched = match.sigma, match.converged
        else:  # the checkpoint's next-token distributions equal the base model's (e.g. a warm-up step at lr 0)
            sigma, matched = 0.0, True
        with quiet_library_bars():
            noisy = models.load(base.spec, device=device)
        weight_noise.apply_weight_noise(noisy.hf, base.hf, sigma, seed=1000 * seed + i)
        m = measure_checkpoint(noisy, probes, neuron_sets)
        label = f"{tuned['label']}~noise"
        measured[label] = m
        rows.append(measurement_row({"label": label, "run": tuned["run"], "lr": tuned["lr"], "step": tuned["step"],
                                     "sigma": sigma, "target_kl": tuned["kl"], "matched": matched},
                                    base_measurement, m, neuron_sets))
        del noisy
    return rows, measured
