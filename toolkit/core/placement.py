"""Where :func:`toolkit.core.models.load` puts a model: ``device`` (the whole model on one device) or ``device_map``
(split across GPUs), each checked before anything is loaded with a :class:`~toolkit.core.specs.ModelLoadError` that
names the value, what this machine has and the fix.

``device``: ``"auto"`` (CUDA if available, else the CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
:func:`resolve_device` refuses a string that names no device, another device type, and a CUDA GPU or MPS that this
machine does not have (torch would fail later, e.g. with ``AssertionError: Torch not compiled with CUDA enabled``).
Every loader and trainer resolves its ``device`` here.

Models larger than one GPU: ``load(spec, device_map="auto")`` (or ``"balanced"``, ``"balanced_low_0"``,
``"sequential"``, or a dict ``{module name: GPU index}``) passes ``device_map`` to ``from_pretrained``, which splits
the layers across the visible GPUs (accelerate's dispatch hooks move activations between them); the model is not
moved afterwards, and the TransformerBridge wraps the dispatched model as it is (transformer_lens 4.x takes the
placement from ``hf.hf_device_map``: ``cfg.device`` is the embedding's GPU, ``cfg.n_devices`` the number of GPUs).
The bridge's own ``device_map``/``n_devices``/``max_memory`` options apply only when it loads the model itself, which
the toolkit never lets it do (it loads the weights first, to check them), so they are not used. Inputs go to the
embedding's device (``next(hf.parameters()).device``, what every caller already uses). Refused before anything is
loaded (:func:`check_device_map`), in this order: ``device_map`` with an explicit ``device``; a string that is not a
strategy, or something that is neither a strategy nor a non-empty dict (whatever the machine); a dict entry on
CPU/disk or on no device (the bridge refuses a model split between GPUs and CPU/disk offload); any map on a machine
without CUDA; a GPU index this machine does not have. A dict that puts every module on the CPU (``{"": "cpu"}``) is
the whole model on the CPU: ``load`` loads it as ``device="cpu"`` (:func:`whole_on_cpu`). Refused after loading
(:func:`check_dispatched`): ``"auto"`` offloading modules to CPU/disk because the GPUs are too small. On one GPU a map
is the same as ``device="cuda"``. :func:`toolkit.methods.eap.memory.check_memory` budgets each GPU for the layers it
holds. Tested on CPU with CUDA faked (``tests/test_device_map.py``); not yet run on two GPUs.
"""

from __future__ import annotations

import torch

from toolkit.core.specs import ModelLoadError

DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")  # from_pretrained's device_map names
DEVICE_FIX = "use device='auto' (a CUDA GPU if there is one, else the CPU) or device='cpu'"


def _machine() -> str:
    """What this machine offers to load on, for the messages."""
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = torch.backends.mps.is_available()
    gpus = f"{n} CUDA GPU{'s' * (n != 1)} (cuda:0..cuda:{n - 1})" if n else \
        f"no CUDA GPU (torch {torch.__version__}: torch.cuda.is_available() is False)"
    return f"this machine has {gpus}" + (", and MPS" if mps else "" if n else ", only the CPU")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The device ``device`` names (``"auto"``: CUDA if available, else the CPU), or a :class:`ModelLoadError` naming
    the value, what this machine has and the fix if it names no device, or one this machine does not have."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ModelLoadError(f"device={device!r} is not a device: use 'auto', 'cpu', 'cuda', 'cuda:N' (N: a GPU "
                             f"index) or 'mps'; {_machine()}") from err
    if resolved.type == "cpu":
        return resolved
    if resolved.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not 0 <= (resolved.index or 0) < n:
            raise ModelLoadError(f"device={device!r} names a CUDA GPU, but {_machine()}; {DEVICE_FIX}"
                                 + (f", or one of cuda:0..cuda:{n - 1}" if n else ""))
        return resolved
    if resolved.type == "mps":
        if not torch.backends.mps.is_available():
            raise ModelLoadError(f"device={device!r} names Apple MPS, which this machine does not have "
                                 f"(torch.backends.mps.is_available() is False): {_machine()}; {DEVICE_FIX}")
        return resolved
    raise ModelLoadError(f"device={device!r} is not a device the toolkit loads models on (it loads on 'cpu', 'cuda', "
                         f"'cuda:N' or 'mps'; {_machine()}); {DEVICE_FIX}")


def _gpu_index(target) -> int | None:
    """The CUDA index a device_map value names (``1``, ``"cuda:1"``, ``torch.device("cuda", 1)``; ``"cuda"`` is 0),
    or ``None`` for anything else (``"cpu"``, ``"disk"``, ``"meta"``, ...)."""
    if isinstance(target, bool):
        return None
    if isinstance(target, int):
        return target
    try:
        device = torch.device(target)
    except (RuntimeError, TypeError):
        return None
    return (device.index or 0) if device.type == "cuda" else None


def _offload(target) -> str | None:
    """``"CPU"`` or ``"disk"`` for a device_map value that offloads there, else ``None``."""
    if target == "disk":
        return "disk"
    try:
        return "CPU" if not isinstance(target, bool | int) and torch.device(target).type == "cpu" else None
    except (RuntimeError, TypeError):
        return None


def whole_on_cpu(device_map) -> bool:
    """Whether ``device_map`` is a dict that puts every module on the CPU (``{"": "cpu"}``): the whole model on one
    device, which :func:`toolkit.core.models.load` loads as ``device="cpu"``."""
    return isinstance(device_map, dict) and bool(device_map) and all(_offload(v) == "CPU" for v in device_map.values())


def check_device_map(device_map, device: str = "auto") -> None:
    """Refuse a ``device_map`` that :func:`~toolkit.core.models.load` cannot run, before anything is loaded (module
    docstring), with a :class:`ModelLoadError` naming the option and what to do instead. ``None`` passes."""
    if device_map is None:
        return
    if device != "auto":
        raise ModelLoadError(f"device_map={device_map!r} and device={device!r} both say where the model goes: "
                             "device_map splits it across GPUs, device puts it whole on one device; pass one of "
                             "them (leave device='auto' with device_map)")
    if isinstance(device_map, str):
        if device_map not in DEVICE_MAP_STRATEGIES:
            raise ModelLoadError(f"device_map={device_map!r} is not a placement strategy; use one of "
                                 f"{', '.join(DEVICE_MAP_STRATEGIES)}, or a dict {{module name: GPU index}}")
    elif not isinstance(device_map, dict) or not device_map:
        raise ModelLoadError(f"device_map must be a strategy ({', '.join(DEVICE_MAP_STRATEGIES)}) or a non-empty dict "
                             f"{{module name: GPU index}}, got {device_map!r} ({type(device_map).__name__})")
    elif whole_on_cpu(device_map):
        return  # load() puts the whole model on the CPU, as device="cpu"
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    has = f"it has {n_gpus}: 0..{n_gpus - 1}" if n_gpus else "it has none"
    for module, target in (device_map.items() if isinstance(device_map, dict) else ()):
        if _gpu_index(target) is None:
            where = _offload(target)
            why = (f"offloading modules to {where} is not supported" if where else "it names no device") + \
                " (the TransformerBridge refuses a model split between GPUs and CPU/disk offload)"
            raise ModelLoadError(f"device_map[{module!r}] = {target!r} is not a GPU of this machine ({has}): {why}; "
                                 "map every module to a GPU index, or drop device_map to load the whole model on one "
                                 "device (device='cpu' puts it on the CPU)")
    if not n_gpus:
        raise ModelLoadError(f"device_map={device_map!r} splits a model across CUDA GPUs, but this machine has none "
                             f"(torch {torch.__version__}: torch.cuda.is_available() is False); drop device_map to "
                             "load the model whole on the CPU, or run on a machine with GPUs")
    for module, target in (device_map.items() if isinstance(device_map, dict) else ()):
        if not 0 <= _gpu_index(target) < n_gpus:
            raise ModelLoadError(f"device_map[{module!r}] = {target!r} is not a GPU of this machine ({has}); map "
                                 "every module to a GPU index, or drop device_map to load on one device")


def check_dispatched(hf, spec: str, device_map) -> None:
    """Refuse a model that ``device_map`` left partly on CPU/disk (the GPUs were too small for it)."""
    placed = getattr(hf, "hf_device_map", None) or {}
    offloaded = [name for name, target in placed.items() if _gpu_index(target) is None]
    if offloaded:
        free = "; ".join(f"cuda:{i} {torch.cuda.mem_get_info(i)[0] / 2**30:.1f} GiB free"
                         for i in range(torch.cuda.device_count()))
        names = ", ".join(offloaded[:3]) + (", ..." if len(offloaded) > 3 else "")
        raise ModelLoadError(
            f"device_map={device_map!r} put {len(offloaded)} module{'s' * (len(offloaded) != 1)} of {spec!r} on "
            f"CPU/disk ({names}): it does not fit on the GPUs ({free}), and the TransformerBridge cannot run a model "
            "split between GPUs and CPU/disk; free GPU memory, use more or larger GPUs, or load in a smaller dtype "
            "(dtype=torch.bfloat16)")
