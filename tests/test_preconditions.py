"""Study preconditions (toolkit.evaluation.preconditions): registered as checks, a failed one stops the notebook and
the scorecard says so; notebook 05 refuses a model without a think mode."""

from __future__ import annotations

import json
import shutil

import pytest

from toolkit.evaluation import preconditions as pre
from toolkit.evaluation.claims import Claims, Null
from toolkit.run import report


def _checks(count: int, threshold: int = 10, notebook: str = "03_eap_ig") -> Claims:
    claims = Claims(notebook)
    pre.at_least(claims, "enough-pairs:arithmetic", count=count, threshold=threshold, paper="Thinking Sparks",
                 section="s", statement="enough pairs", measure="pairs of 40 problems", unit="pairs")
    return claims


def _finding(claims: Claims) -> Claims:
    claims.add("a-finding", paper="Thinking Sparks", statement="x", measure="m", estimate=1.0, ci=(0.5, 1.5),
               null=Null("bootstrap-resample", 10), direction=1, p_value=0.01, sesoi=0.2, sesoi_reason="r",
               controls=("random",))
    return claims


def test_a_met_precondition_reproduces_and_an_unmet_one_stops_with_its_numbers():
    met = _checks(10)
    assert met["precondition:enough-pairs:arithmetic"].verdict == "reproduces" and pre.require(met) is met
    assert pre.share_threshold(40, 0.25) == 10 and pre.share_threshold(4, 0.25) == pre.MIN_COUNT
    unmet = _checks(3)
    c = unmet["precondition:enough-pairs:arithmetic"]
    assert c.kind == "check" and pre.is_precondition(c) and c.verdict == "contradicts"
    with pytest.raises(pre.PreconditionFailed, match=r"precondition:enough-pairs:arithmetic.*= 3, needs at least 10"):
        pre.require(unmet)


def test_merged_puts_the_preconditions_first_and_keeps_every_verdict():
    checks, findings = _checks(12), _finding(Claims("03_eap_ig"))
    out = pre.merged(checks, findings)
    assert [c.id for c in out] == ["precondition:enough-pairs:arithmetic", "a-finding"]
    assert out.verdicts() == {**checks.verdicts(), **findings.verdicts()}


def test_the_scorecard_says_precondition_failed_instead_of_verdicts(tmp_path):
    failed = pre.merged(_checks(0), _finding(Claims("03_eap_ig")))
    fine = _finding(Claims("05_think_on_off"))
    for claims in (failed, fine):
        (tmp_path / f"{claims.notebook}.claims.json").write_text(json.dumps(claims.to_records()))
    report.write_report(tmp_path)
    text = (tmp_path / "REPORT.md").read_text()
    assert "Precondition failed — 03_eap_ig" in text and "⛔ precondition failed" in text
    assert "1 findings: 1 reproduce" in text and "precondition failed in 03_eap_ig (not counted)" in text
    records = {(r["notebook"], r["id"]): r for r in json.loads((tmp_path / "claims.json").read_text())}
    assert records["03_eap_ig", "a-finding"]["precondition_failed"] is True
    assert "precondition_failed" not in records["05_think_on_off", "a-finding"]


def test_a_run_whose_preconditions_pass_has_the_same_scorecard_headline(tmp_path):
    (tmp_path / "03_eap_ig.claims.json").write_text(json.dumps(pre.merged(_checks(20), _finding(
        Claims("03_eap_ig"))).to_records()))
    report.write_report(tmp_path)
    text = (tmp_path / "REPORT.md").read_text()
    assert "precondition failed" not in text.lower() and "1 findings: 1 reproduce" in text


def test_notebook_03_counts_pairs_per_task_and_model_and_names_why_there_are_none():
    from toolkit.studies import emergent
    from toolkit.studies.emergent import claims as emergent_claims

    setup = emergent.Setup({"a": None, "b": None}, None, {"arithmetic": {"a": [0] * 12, "b": None}}, n_problems=40,
                           no_pairs={("arithmetic", "b"): "the model's responses never changed"})
    checks = emergent_claims.preconditions(setup)
    assert checks["precondition:enough-pairs:arithmetic:a"].verdict == "reproduces"
    b = checks["precondition:enough-pairs:arithmetic:b"]
    assert b.verdict == "contradicts" and b.estimate == 0 and "never changed" in b.note
    with pytest.raises(pre.PreconditionFailed, match="arithmetic:b"):
        pre.require(checks)


def test_notebook_05_counts_each_modes_pairs():
    from toolkit.studies.think_on_off import claims as think_claims

    checks = think_claims.preconditions({"think_on": [0] * 8, "think_off": [0] * 7}, 32, task="related_math")
    assert checks.verdicts() == {"precondition:enough-pairs:think_on": "reproduces",
                                 "precondition:enough-pairs:think_off": "contradicts"}


def test_notebook_06_needs_the_base_model_to_refuse_marked_requests():
    from toolkit.studies.rim.probes import RefusalBehaviour, preconditions

    def b(refused):
        return RefusalBehaviour(refused, [False] * len(refused), [False] * len(refused), [""] * len(refused),
                                [""] * len(refused))

    checks = preconditions({"think_on": b([True] * 6), "think_off": b([True] + [False] * 5)})
    assert checks.verdicts() == {"precondition:refuses-marked:think_on": "reproduces",
                                 "precondition:refuses-marked:think_off": "contradicts"}


# notebook 05: a model without a think mode ------------------------------------------------------------------------
def test_the_tiny_fixture_tokenizers_support_thinking(tiny):
    from toolkit.core.chat import check_thinking_support, thinking_support_problems

    assert thinking_support_problems(tiny.tokenizer) == []
    check_thinking_support(tiny.tokenizer)


def test_a_tokenizer_without_think_tokens_or_template_is_refused_naming_what_is_missing(tiny_dirs):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from toolkit.core.chat import check_thinking_support, thinking_support_problems

    tok = AutoTokenizer.from_pretrained(tiny_dirs["qwen3"])
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        check_thinking_support(tok, "notebook 05")
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # ignores enable_thinking
    assert thinking_support_problems(tok) == ["a chat template that ignores enable_thinking (thinking on and off "
                                              "give the same prompt)"]
    plain = Tokenizer(models.WordLevel({"[UNK]": 0, "hi": 1}, unk_token="[UNK]"))
    plain.pre_tokenizer = pre_tokenizers.Whitespace()
    bare = PreTrainedTokenizerFast(tokenizer_object=plain, unk_token="[UNK]")
    problems = thinking_support_problems(bare)
    assert problems == ["no <think> or </think> token in its vocabulary", "no chat template"]


def test_notebook_05_refuses_a_model_without_a_think_mode_before_any_work(tiny_dirs, tmp_path, monkeypatch):
    """A chat template that ignores enable_thinking (as Qwen2.5-Math's does); a model with no template at all is
    refused by toolkit.core.models.load already."""
    from toolkit.studies import think_on_off

    folder = tmp_path / "no-think-mode"
    shutil.copytree(tiny_dirs["qwen3"], folder)
    config = folder / "tokenizer_config.json"
    data = json.loads(config.read_text())
    data.pop("chat_template", None)
    config.write_text(json.dumps(data))
    (folder / "chat_template.jinja").write_text("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                                               "{{ m['content'] }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n")
    monkeypatch.setattr(think_on_off, "study_problems", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(ValueError, match=r"notebook 05 \(think on/off\) needs a hybrid think on/off model.*ignores "
                                         "enable_thinking"):
        think_on_off.prepare(str(folder), device="cpu", n_problems=4, n_circuit=4, circuit_task="related_math")
