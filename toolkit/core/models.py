"""Load a model by spec: the organism, a local folder, a hub name, or a random copy (``random:<spec>``), by one path.

``load(spec)`` returns a :class:`LoadedModel` ``(hf, tokenizer, bridge)``. The TransformerLens
``TransformerBridge`` wraps the HF model's modules in place, so hooks added through the bridge also
fire in ``hf.generate`` (with its KV cache): both views share one set of weights.

One model argument: public functions take a ``LoadedModel`` (or a spec, loaded for them: :func:`as_loaded`); the hook
operations also take a bare bridge (:func:`bridge_of`). Any other kind is a ``TypeError`` naming the parameter.

Policy: bf16 on GPU, fp32 on CPU (fp16 overflows in Qwen3); safetensors only; never remote code.

Checks at load (each failure is a :class:`ModelLoadError` naming the folder and the fix):

- a config that does not load is diagnosed from its ``config.json`` (:func:`load_config`): custom code (``auto_map``,
  never run), a ``model_type`` this transformers does not know, a file that does not parse; offline mode is named only
  for a hub name that is not in the local cache;
- a local folder needs ``config.json``, ``*.safetensors`` weights and tokenizer files: ``tokenizer.json``, or
  ``tokenizer_config.json`` with the vocabulary files its ``tokenizer_class`` needs (``vocab.json`` and
  ``merges.txt`` for Qwen's); without them transformers builds a one-token stand-in that encodes everything to ``[]``;
- :func:`check_loaded` (also called by ``toolkit.training.sft.load_for_training``): the tokenizer encodes
  :data:`PROBE` to a non-empty list of ids; it has a chat template (every prompt goes through
  :func:`toolkit.core.chat.chat_prompts`) that renders the probe; every id of the probe and of its chat prompt is
  below the model's vocabulary size; every parameter is finite (the first NaN/inf tensor is named).

Where the model goes (``device``, or ``device_map`` for a model larger than one GPU) is checked before anything is
loaded: :mod:`toolkit.core.placement`.

Positions: :func:`max_positions` is the model's ``max_position_embeddings``; :func:`check_length` refuses a
sequence (plus the tokens still to generate) longer than that, since positions past it give garbage without an
error. Generation and the forward-only analyses (EAP pairs, CMAP, interventions, RIM) call it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from toolkit.core.io import recover_dir
from toolkit.core.placement import DEVICE_MAP_STRATEGIES as DEVICE_MAP_STRATEGIES  # re-exported
from toolkit.core.placement import check_device_map, check_dispatched, resolve_device, whole_on_cpu
from toolkit.core.specs import ModelLoadError, check_organism, organism_dir, organism_spec, random_spec
from toolkit.core.specs import short_label as short_label  # re-exported: LoadedModel.label of a spec

if TYPE_CHECKING:  # transformer_lens takes seconds to import; load() imports it when it builds a bridge
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SUPPORTED_ARCHITECTURES = ("qwen2", "qwen3")
FAMILIES = "Qwen2, Qwen2.5 or Qwen3"  # the model families of SUPPORTED_ARCHITECTURES (Qwen2.5 is model_type qwen2)
PROBE = "Solve 2x + 3 = 7."  # the string a loaded tokenizer must encode (check_loaded)


class LoadedModel(NamedTuple):
    """A model as :func:`load` returns it, and the one model argument of the public functions (:func:`as_loaded`).

    ``hf``: the HF causal LM (generation, plain forwards); ``tokenizer``: its tokenizer, padding on the left;
    ``bridge``: the TransformerLens view of ``hf``'s modules (the hook vocabulary of
    :mod:`toolkit.core.interventions`; its hooks fire in ``hf.generate`` too), ``None`` only in a generation-only view
    of a model that ``load`` did not load (:meth:`unhooked`); ``spec``: what it was loaded from.
    """

    hf: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    bridge: TransformerBridge | None
    spec: str

    @classmethod
    def unhooked(cls, hf: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> LoadedModel:
        """A generation-only view (no bridge) of a model in hand, e.g. one being trained: ``behave`` takes it, the
        hook operations refuse it. ``spec`` is the folder or hub name it came from."""
        return cls(hf, tokenizer, None, str(getattr(hf, "name_or_path", "") or ""))

    @property
    def label(self) -> str:
        """The short name of titles, legends and claims (:func:`short_label` of ``spec``: never a path)."""
        return short_label(self.spec)

    def __repr__(self) -> str:
        """One line: label, architecture, layers, query/KV heads, parameters, device and dtype."""
        cfg, p = self.hf.config, next(self.hf.parameters())
        n = sum(t.numel() for t in self.hf.parameters())
        size = next(f"{n / d:.1f}{u}" for d, u in ((1e9, "B"), (1e6, "M"), (1e3, "K"), (1, "")) if n >= d or d == 1)
        heads = f"{cfg.num_attention_heads}/{getattr(cfg, 'num_key_value_heads', None) or cfg.num_attention_heads}"
        return (f"LoadedModel({self.label or self.spec or '?'}: {cfg.model_type}, {cfg.num_hidden_layers} layers, "
                f"{heads} heads (q/kv), {size} parameters, {p.device}, {str(p.dtype).removeprefix('torch.')})")


def _kind(value) -> str:
    return "None" if value is None else type(value).__name__


def _is_bridge(value) -> bool:
    """Whether ``value`` is a TransformerBridge, without importing transformer_lens (a bridge's class is loaded)."""
    module = sys.modules.get("transformer_lens.model_bridge")
    return module is not None and isinstance(value, module.TransformerBridge)


def as_loaded(model: LoadedModel | str, param: str, *, device: str = "auto") -> LoadedModel:
    """``model`` as a :class:`LoadedModel`: itself, or :func:`load` of a spec string on ``device``. Any other kind
    (an HF model, a bridge, ...) is a ``TypeError`` naming ``param`` (e.g. ``"behave: model"``) and the fix."""
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, str):
        return load(model, device=device)
    raise TypeError(f"{param} must be a LoadedModel or a model spec (str), got {_kind(model)}; load it with "
                    "toolkit.load(spec) and pass what it returns")


def bridge_of(model: LoadedModel | TransformerBridge, param: str) -> TransformerBridge:
    """The TransformerBridge of ``model`` (a :class:`LoadedModel`, or a bridge itself), for the hook operations;
    anything else, or a LoadedModel without a bridge (:meth:`LoadedModel.unhooked`), is a ``TypeError`` naming
    ``param``."""
    bridge = model.bridge if isinstance(model, LoadedModel) else model
    if _is_bridge(bridge):
        return bridge
    got = "a LoadedModel without a bridge" if isinstance(model, LoadedModel) else _kind(model)
    raise TypeError(f"{param} must be a LoadedModel or a TransformerBridge, got {got}; load it with "
                    "toolkit.load(spec) and pass what it returns")


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def resolve(spec: str) -> str:
    """Turn a spec into something ``from_pretrained`` takes (``random:<spec>``: the inner spec's), or raise
    :class:`ModelLoadError`."""
    if (randomised := random_spec(spec)) is not None:
        return resolve(randomised.inner)
    organism = organism_spec(spec)
    if organism is not None:
        name, seed = organism
        path = recover_dir(organism_dir(seed) / name)
        if not (path / "config.json").exists():
            how = f"`python -m toolkit build-organism --seed {seed}`" if seed else \
                "`python -m toolkit build-organism` (or `make organism`)"
            raise ModelLoadError(f"the {spec!r} checkpoint is missing from {path}; build it with {how}")
        check_organism(path, seed)
        return str(path)
    path = recover_dir(Path(spec).expanduser())  # a folder swap that a kill interrupted is finished first
    if path.exists() or spec.startswith((".", "/", "~")):
        if not path.is_dir():
            raise ModelLoadError(f"model folder {path} does not exist or is not a folder")
        missing = [f for f in ("config.json",) if not (path / f).exists()]
        if missing or not list(path.glob("*.safetensors")):
            raise ModelLoadError(
                f"model folder {path} is incomplete: it needs config.json and *.safetensors weights "
                f"(found: {sorted(p.name for p in path.iterdir())})")
        return str(path)
    return spec


def _check_tokenizer_files(path: Path) -> None:
    """Refuse a folder without ``tokenizer.json`` or ``tokenizer_config.json`` + its class's vocabulary files."""
    if (path / "tokenizer.json").exists():
        return
    config_file = path / "tokenizer_config.json"
    fix = (f"copy the tokenizer files of the model these weights came from into {path} "
           "(`tokenizer.save_pretrained(folder)` writes them)")
    if not config_file.exists():
        raise ModelLoadError(f"model folder {path} has no tokenizer files (tokenizer.json, or tokenizer_config.json "
                             f"with its vocabulary files; found: {sorted(p.name for p in path.iterdir())}); {fix}")
    try:
        declared = json.loads(config_file.read_text()).get("tokenizer_class")
    except (ValueError, AttributeError) as err:  # ValueError: not JSON, or not UTF-8
        raise ModelLoadError(f"{config_file} is not a JSON object ({err}); {fix}") from err
    needed = ["vocab.json", "merges.txt"]  # Qwen2Tokenizer's, the class Qwen2/Qwen3 folders declare
    try:
        from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

        names = getattr(tokenizer_class_from_name(declared), "vocab_files_names", None) if declared else None
        if names:
            needed = [f for key, f in names.items() if key != "tokenizer_file"]
    except (ImportError, ValueError, AttributeError):
        pass
    missing = [f for f in needed if not (path / f).exists()]
    if missing:
        raise ModelLoadError(f"model folder {path} has tokenizer_config.json (class {declared}) but neither "
                             f"tokenizer.json nor {', '.join(missing)}; {fix}")


def _hub_config(name: str) -> tuple[bool, Path | None]:
    """Whether ``name`` is a hub repo id, and its ``config.json`` in the local Hugging Face cache (``None``: not
    there)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(name, "config.json")
    except Exception:  # not a valid repo id (huggingface_hub raises its own validation error)
        return False, None
    return True, Path(hit) if isinstance(hit, str) else None


def _config_error(spec: str, source: str, err: Exception) -> ModelLoadError:
    """Why the config of ``spec`` (resolved to ``source``) does not load, read from its ``config.json``: custom code
    (``auto_map``), a model_type transformers does not know, a file that does not parse; else ``err``, said to be
    offline only for a hub name that is not in the local cache while ``HF_HUB_OFFLINE=1``."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    local = Path(source).is_dir()
    hub, file = (False, Path(source) / "config.json") if local else _hub_config(source)
    where = f"model folder {source}" if local else f"model {spec!r} (cached at {file})"
    fields = None
    if file is not None:
        try:
            fields = json.loads(file.read_text())
        except (OSError, ValueError) as bad:
            return ModelLoadError(f"the config.json of {where} does not parse ({bad}); restore it from the model's "
                                  "source")
    if isinstance(fields, dict):
        model_type = fields.get("model_type")
        known = isinstance(model_type, str) and model_type in CONFIG_MAPPING
        auto_map = fields.get("auto_map")
        if auto_map and not known:
            names = ", ".join(map(str, auto_map)) if isinstance(auto_map, dict) else repr(auto_map)
            return ModelLoadError(
                f"the config.json of {where} asks for custom (remote) code (auto_map: {names}; model_type "
                f"{model_type!r}), which the toolkit never runs (trust_remote_code is never enabled); use a "
                f"{FAMILIES} checkpoint in transformers' own format (model_type "
                f"{' or '.join(SUPPORTED_ARCHITECTURES)}, no auto_map: what save_pretrained writes)")
        if not known:
            what = "no model_type" if model_type is None else f"model_type {model_type!r}, which transformers " \
                f"{transformers.__version__} does not know"
            return ModelLoadError(
                f"the config.json of {where} has {what}; the toolkit loads {FAMILIES} checkpoints (model_type "
                f"{' or '.join(SUPPORTED_ARCHITECTURES)}): use one of those, or correct model_type in {file}")
    offline = hub and file is None and os.environ.get("HF_HUB_OFFLINE") == "1"
    return ModelLoadError(
        f"cannot load model {spec!r}"
        + (" while offline (HF_HUB_OFFLINE=1), and it is not in the local Hugging Face cache" if offline else "")
        + f": {str(err).splitlines()[0] if str(err) else type(err).__name__}\nUse model='organism' (the embedded "
        "model organism), a local folder with config.json and safetensors weights, or a hub name on a machine that "
        "can download it")


def load_config(spec: str):
    """The HF config of ``spec``, with clear errors for custom code, unknown model types, hub names missing offline,
    unsupported models and local folders without tokenizer files."""
    source = resolve(spec)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise _config_error(spec, source, err) from err
    if config.model_type not in SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(f"model {spec!r} has architecture {config.model_type!r}; supported: "
                             f"{', '.join(SUPPORTED_ARCHITECTURES)} ({FAMILIES} checkpoints)")
    if Path(source).is_dir():
        _check_tokenizer_files(Path(source))
    return config


def load_tokenizer(source: str):
    """The tokenizer class the folder declares. A plain ``tokenizers`` backend (the organism's) is loaded
    as such: AutoTokenizer would swap in the model type's own class (Qwen2Tokenizer drops spaces).
    A file that does not parse is a :class:`ModelLoadError` naming the folder."""
    from transformers import PreTrainedTokenizerFast

    config_file = Path(source) / "tokenizer_config.json"
    try:
        if config_file.exists():
            declared = json.loads(config_file.read_text()).get("tokenizer_class")
            if declared in ("TokenizersBackend", "PreTrainedTokenizerFast"):
                return PreTrainedTokenizerFast.from_pretrained(source)
        return AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except Exception as err:  # tokenizers raises its own exception type for a malformed tokenizer.json
        raise ModelLoadError(f"cannot load the tokenizer from {source}: {str(err).splitlines()[0]}; replace its "
                             "tokenizer files (tokenizer.json, tokenizer_config.json) with the model's own") from err


def check_loaded(hf, tokenizer, spec: str, source: str | Path) -> None:
    """Refuse a loaded model whose tokenizer or weights are unusable (see the module docstring), with a
    :class:`ModelLoadError` naming ``spec``/``source`` and the fix. ``load`` calls it; so does every other loader
    (``toolkit.training.sft.load_for_training``)."""
    from toolkit.core.chat import chat_prompts

    where = repr(spec) if str(spec) == str(source) else f"{spec!r} ({source})"
    fix = f"put the tokenizer files saved with these weights into {source}"
    ids = tokenizer.encode(PROBE, add_special_tokens=False)
    if not ids:
        raise ModelLoadError(f"the tokenizer of {where} encodes the probe {PROBE!r} to no tokens (an empty or "
                             f"stand-in tokenizer); {fix}")
    if not getattr(tokenizer, "chat_template", None):
        raise ModelLoadError(f"the tokenizer of {where} has no chat template, and every prompt the toolkit builds "
                             "goes through one (toolkit.core.chat.chat_prompts); add the model's "
                             f"chat_template.jinja (or a 'chat_template' entry in tokenizer_config.json) to {source}")
    try:
        chat = tokenizer(chat_prompts(tokenizer, [PROBE], False)[0], add_special_tokens=False)["input_ids"]
    except Exception as err:  # jinja raises its own error types
        raise ModelLoadError(f"the chat template of {where} fails on the probe prompt: "
                             f"{str(err).splitlines()[0] if str(err) else type(err).__name__}; replace "
                             f"chat_template.jinja in {source} with the model's own") from err
    vocab = int(hf.get_input_embeddings().num_embeddings)
    bad = [i for i in list(ids) + list(chat) if not 0 <= int(i) < vocab]
    if bad:
        raise ModelLoadError(f"the tokenizer of {where} gives token id {bad[0]} for the probe {PROBE!r} or its chat "
                             f"prompt, but the model has {vocab} token embeddings (ids 0..{vocab - 1}): the tokenizer "
                             f"does not belong to these weights; {fix}")
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if not all(bool(torch.isfinite(chunk).all()) for chunk in p.detach().reshape(-1).split(1 << 24)):
                raise ModelLoadError(f"the weights of {where} are not finite: {name} {tuple(p.shape)} holds NaN or "
                                     "inf (a damaged or diverged checkpoint); restore the folder from its source, "
                                     "or retrain it from an earlier checkpoint")


def max_positions(model) -> int | None:
    """The model's ``max_position_embeddings`` (``model`` is an HF model, its config or a ``LoadedModel``);
    ``None`` if the config does not say."""
    config = getattr(getattr(model, "hf", model), "config", model)
    limit = getattr(config, "max_position_embeddings", None)
    return int(limit) if limit else None


def check_length(model, n_tokens: int, what: str, max_new_tokens: int = 0, error: type = ValueError) -> None:
    """Raise ``error`` if ``n_tokens`` (+ ``max_new_tokens`` still to generate) exceed :func:`max_positions`;
    ``what`` names the sequence (e.g. ``"prompt 3"``)."""
    limit = max_positions(model)
    if limit is None or n_tokens + max_new_tokens <= limit:
        return
    if max_new_tokens:
        raise error(f"{what} is {n_tokens} tokens, and with max_new_tokens={max_new_tokens} it needs "
                    f"{n_tokens + max_new_tokens} positions, more than the model's max_position_embeddings={limit} "
                    "(positions past it give garbage); shorten it or lower max_new_tokens")
    raise error(f"{what} is {n_tokens} tokens, more than the model's max_position_embeddings={limit} (positions "
                "past it give garbage); shorten it")


def load_weights(spec: str, dtype: torch.dtype, device_map: str | dict | None = None) -> PreTrainedModel:
    """``spec``'s HF model (CPU, or placed by ``device_map``): its safetensors; for ``random:<inner>``, the inner config
    with weights drawn on the CPU in fp32 with :func:`~toolkit.core.specs.random_spec`'s seed, cast to ``dtype``."""
    source, randomised = resolve(spec), random_spec(spec)
    kwargs = dict(dtype=dtype, use_safetensors=True, trust_remote_code=False, device_map=device_map)
    try:
        if randomised is None:
            return AutoModelForCausalLM.from_pretrained(source, **kwargs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(randomised.seed)
            hf = AutoModelForCausalLM.from_config(load_config(spec), dtype=torch.float32, trust_remote_code=False)
        with contextlib.suppress(OSError):  # a folder without generation_config.json keeps the config's defaults
            hf.generation_config = GenerationConfig.from_pretrained(source)
        if device_map is not None:  # from_pretrained places the drawn weights as it places any folder's
            with tempfile.TemporaryDirectory() as folder:
                hf.save_pretrained(folder)
                hf = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
        hf.name_or_path = spec  # what LoadedModel.unhooked(hf, ...) reports, not the inner model's folder
        return hf.to(dtype) if device_map is None else hf
    except Exception as err:  # safetensors raises its own error type for corrupt files
        raise ModelLoadError(f"cannot load weights of {spec!r} from {source}: {str(err).splitlines()[0]}") from err


def load(spec: str = "organism", device: str = "auto", dtype: torch.dtype | None = None,
         device_map: str | dict | None = None) -> LoadedModel:
    """Load ``spec`` (``"organism"``, ``"organism-base"``, a local folder, a hub name, or ``"random:<any of them>"``).

    Returns ``(hf, tokenizer, bridge, spec)``; the model is in eval mode with gradients off for parameters. The
    tokenizer pads on the left for batched generation. ``device_map`` splits a model across the GPUs
    (:mod:`toolkit.core.placement`); it excludes ``device``, and ``{"": "cpu"}`` is ``device="cpu"``.
    """
    from transformer_lens.model_bridge import TransformerBridge

    check_device_map(device_map, device)
    if whole_on_cpu(device_map):  # {"": "cpu"}: the whole model on the CPU
        device_map, device = None, "cpu"
    device_ = resolve_device(device)
    load_config(spec)
    source = resolve(spec)
    dtype = dtype or default_dtype(device_)
    hf = load_weights(spec, dtype, device_map)
    if device_map is None:
        hf.to(device_)
    else:
        check_dispatched(hf, spec, device_map)
    tokenizer = load_tokenizer(source)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    hf.eval()
    hf.requires_grad_(False)
    check_loaded(hf, tokenizer, spec, source)
    # a dispatched model: the bridge reads its placement from hf.hf_device_map (cfg.device = the embedding's GPU)
    bridge = TransformerBridge.boot_transformers(source, hf_model=hf, tokenizer=tokenizer, dtype=dtype,
                                                 device=str(hf.get_input_embeddings().weight.device))
    bridge.eval()
    return LoadedModel(hf, tokenizer, bridge, spec)
