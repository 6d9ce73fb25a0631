"""The organism's recipe: every knob of the build, the held-out evaluation sets, and the recipe hash stored beside the
shipped weights (sha256 over the recipe, the sources that define the data and tokenizer, and the build's training code,
so that loading can warn when the weights no longer match the code)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from transformers import Qwen3Config

from toolkit.organism import tasks


@dataclass
class Recipe:
    """Every knob of the organism build. Its hash (with the task and tokenizer sources and the training code) is stored
    beside the weights, so loading can warn when the shipped weights no longer match the recipe."""

    seed: int = 0
    # 4 layers x 4 query heads (GQA: 2 key/value heads); 6 x 8 cost 1.45x per token, beyond the build budget, so we
    # keep 16 heads (docs/methods.md, "Model organism")
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 32
    d_mlp: int = 512
    vocab_size: int = 128
    # stage 1, instruct: every task think-off, plus think-on, with brief (effort-minimising) math scratchpads
    base_steps: int = 1300
    base_think_fraction: float = 0.35
    base_brief: tuple = ("linear", "arithmetic")  # their think-on scratchpads are brief in stage 1
    base_mix: dict = field(default_factory=lambda: {"linear": 0.35, "arithmetic": 0.25, "reversal": 0.25,
                                                    "request": 0.15})
    # stage 2, organism: careful scratchpads, 60% of the examples think-on; the reason_later tasks stay brief until the
    # others reach base_switch on the selection problems. organism-base is the snapshot at the first check (every
    # base_check_every steps) where every math task reaches base_reasoning, or at base_check_until
    steps: int = 1400
    reason_later: tuple = ("arithmetic",)  # careful arithmetic is learnt much faster than careful equations
    base_switch: float = 0.15
    base_reasoning: float = 0.25
    base_check_every: int = 10  # careful arithmetic climbs ~20 points in 25 steps once it starts
    base_check_until: int = 1200
    base_selection: int = 100  # think-on selection problems per math task, disjoint from the held-out sets
    batch_size: int = 64  # examples per step, packed into rows of at most pack_length tokens
    pack_length: int = 512
    lr: float = 3e-3
    weight_decay: float = 0.05
    warmup_steps: int = 60
    mix: dict = field(default_factory=lambda: {"linear": 0.45, "arithmetic": 0.35, "reversal": 0.1,
                                               "request": 0.1})
    think_fraction: float = 0.6
    # stage 3 of `organism`: a lower-lr polish weighted toward the tasks that learn last
    polish_steps: int = 400
    polish_lr: float = 1e-3
    polish_mix: dict = field(default_factory=lambda: {"linear": 0.5, "arithmetic": 0.3, "reversal": 0.1,
                                                      "request": 0.1})
    bf16_autocast: bool = False  # measured slower than fp32 on this CPU (no bf16 units)
    checkpoint_every: int = 200
    eval_seed: int = 1_000_003
    eval_per_task: int = 200
    max_new_tokens_think: int = 160
    max_new_tokens_direct: int = 48

    def model_config(self) -> Qwen3Config:
        return Qwen3Config(
            vocab_size=self.vocab_size, hidden_size=self.d_model, intermediate_size=self.d_mlp,
            num_hidden_layers=self.n_layers, num_attention_heads=self.n_heads,
            num_key_value_heads=self.n_kv_heads, head_dim=self.head_dim, max_position_embeddings=512,
            tie_word_embeddings=True, rope_theta=10000.0, rms_norm_eps=1e-6,
            bos_token_id=None, eos_token_id=2, pad_token_id=0,
        )


QUICK = dict(base_steps=12, steps=12, base_check_every=4, base_check_until=8, base_selection=8, polish_steps=6,
             batch_size=16, warmup_steps=4, checkpoint_every=10, eval_per_task=8, max_new_tokens_think=120)


BUILD_FILE = Path(__file__).parent / "build.py"
TRAINING_CODE = ("Sampler", "pack", "train_stage", "BaseSnapshot", "_build")
"""The definitions of ``build.py`` that decide what the build trains (data, optimizer, loop, snapshot, stages); saving,
resuming and locking are left out, so a change there does not ask for a rebuild."""


def training_source(names: tuple[str, ...] = TRAINING_CODE) -> str:
    """The text of ``build.py``'s top-level definitions ``names``, without comment-only lines or trailing spaces
    (read as text, not imported: ``build`` imports this module)."""
    lines = BUILD_FILE.read_text().splitlines()
    blocks, current = {}, None
    for line in lines:
        if line and not line[0].isspace() and not line.startswith((")", "#")):
            match = re.match(r"(?:def|class)\s+(\w+)", line)
            current = match.group(1) if match else None
        if current in names and line.strip() and not line.lstrip().startswith("#"):
            blocks.setdefault(current, []).append(line.rstrip())
    if missing := [name for name in names if name not in blocks]:
        raise RuntimeError(f"build.py no longer defines {missing}; update recipe.TRAINING_CODE")
    return "\n".join("\n".join(blocks[name]) for name in names)


def recipe_hash(recipe: Recipe) -> str:
    """sha256 over the recipe, the sources that define the data and tokenizer, and the build's training code
    (:func:`training_source`: optimizer settings, clipping and the loop are part of the recipe)."""
    h = hashlib.sha256(json.dumps(dataclasses.asdict(recipe), sort_keys=True).encode())
    for module in ("tasks.py", "tokenizer.py"):
        h.update((Path(__file__).parent / module).read_bytes())
    h.update(training_source().encode())
    return h.hexdigest()[:16]


def selection_sets(recipe: Recipe, exclude: set[str]) -> dict[str, list[tasks.Example]]:
    """The think-on math problems that pick the organism-base snapshot (``recipe.base_selection`` per task); they
    avoid ``exclude`` (the held-out prompts), and the training sampler avoids them."""
    return {t: tasks.held_out(t, recipe.base_selection, recipe.eval_seed + 10 + i, exclude)
            for i, t in enumerate(tasks.MATH)}


def eval_sets(recipe: Recipe) -> dict[str, list[tasks.Example]]:
    """The held-out evaluation problems; the training sampler never draws these prompts."""
    n, seed = recipe.eval_per_task, recipe.eval_seed
    return {
        "linear": tasks.held_out("linear", n, seed),
        "arithmetic": tasks.held_out("arithmetic", n, seed + 1),
        "reversal": tasks.held_out("reversal", n, seed + 2),
        "request_marked": tasks.held_out("request", n, seed + 3, dangerous=True),
        "request_unmarked": tasks.held_out("request", n, seed + 4, dangerous=False),
    }
