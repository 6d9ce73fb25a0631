"""The organism's character-level tokenizer and its Qwen3-like chat template.

One token per character (printable ASCII plus newline and tab), three special tokens and the
``<think>``/``</think>`` added tokens, as in Qwen3. ``enable_thinking=False`` appends an empty
think block to the generation prompt, exactly as Qwen3's template does.
"""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
SPECIAL_TOKENS = [EOS, IM_START, IM_END]
ADDED_TOKENS = [THINK_OPEN, THINK_CLOSE]
CHARACTERS = [c for c in string.printable if c not in "\r\x0b\x0c"]  # 95 printable + \t + \n
EMPTY_THINK = "<think>\n\n</think>\n\n"

# Newlines go inside {{ }} expressions: HF renders templates with trim_blocks, which would eat a
# literal newline after a block tag. Assistant turns are wrapped in {% generation %} for TRL's
# assistant_only_loss.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\\n' }}"
    "{%- else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Return the organism tokenizer (vocabulary of 103 tokens; ids are stable across builds)."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + ADDED_TOKENS + CHARACTERS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=EOS))
    # `.` does not match a newline, so split on [\s\S]: every character becomes its own piece.
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=IM_END,
        pad_token=EOS,
        unk_token=EOS,
        bos_token=None,
        additional_special_tokens=[IM_START],
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tok.add_tokens(ADDED_TOKENS)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def chat_prompt(tokenizer: PreTrainedTokenizerFast, user: str, enable_thinking: bool) -> str:
    """The generation prompt for one user turn, as text."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": user}],
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=enable_thinking,
    )
