"""What differs between the supported transformers releases (5.17, a GPU image's, to the newest tested), in one place.

- :func:`no_activation_checkpointing`: the ``*Config`` keyword that turns activation checkpointing off. Newer releases
  call it ``activation_checkpointing`` (``gradient_checkpointing`` deprecated); 5.17 knows only
  ``gradient_checkpointing``.
- Resuming a run trained on several CPU processes: transformers 5.17 loads the optimizer state with
  ``map_location=args.device``, an indexed CPU device (``cpu:0``) that ``torch.load`` cannot restore to ("don't know how
  to restore data location … tagged with cpu:0"); later releases pass plain ``"cpu"``. Importing this module registers
  a deserializer that restores ``cpu:N`` as the CPU, which is all it means
  (:func:`torch.serialization.register_package`).
"""

from __future__ import annotations

import dataclasses

import torch


def no_activation_checkpointing(config_class) -> dict[str, bool]:
    """``{keyword: False}`` for ``config_class`` (``SFTConfig``, ``GRPOConfig``, ``TrainingArguments``)."""
    names = {f.name for f in dataclasses.fields(config_class)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": False}


def _indexed_cpu(obj, location: str):
    """Restore a storage saved or mapped to ``cpu:N`` on the CPU (``None``: not ours, the next deserializer tries)."""
    return obj.cpu() if isinstance(location, str) and location.startswith("cpu:") else None


# a priority no built-in uses (equal priorities would be compared by their functions when the registry sorts)
_PRIORITY = 1 + max(priority for priority, *_ in torch.serialization._package_registry)
torch.serialization.register_package(_PRIORITY, lambda obj: None, _indexed_cpu)
