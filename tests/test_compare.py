"""``python -m toolkit compare``: two run folders' numbers, timings and paths aside (toolkit.run.compare)."""

from __future__ import annotations

import json

from toolkit.run import cli, compare


def _run(root, accuracy=0.5, seconds=1.0, mode_key="think_on"):
    root.mkdir(parents=True)
    results = {"accuracy": {mode_key: accuracy}, "seconds": seconds, "figure": str(root / "figures" / "a.png"),
               "model": str(root.parent / "data" / "organism"), "build_seconds": seconds}
    (root / "00_x.results.json").write_text(json.dumps(results))
    (root / "claims.json").write_text(json.dumps([{"id": "a", "estimate": accuracy, "p": 0.01}]))
    return root


def test_identical_numbers_compare_equal_whatever_the_timings_and_paths(tmp_path, capsys):
    before, after = _run(tmp_path / "a" / "run"), _run(tmp_path / "b" / "run", seconds=9.0, mode_key="think-on")
    assert compare.differences(before, after) == []
    assert cli.main(["compare", str(before), str(after)]) == 0
    assert "identical: " in capsys.readouterr().out


def test_a_changed_number_or_a_missing_file_is_reported(tmp_path, capsys):
    before, after = _run(tmp_path / "a"), _run(tmp_path / "b", accuracy=0.5000001)
    found = compare.differences(before, after)
    assert "00_x.results.json: /accuracy/think_on: 0.5 → 0.5000001" in found
    assert any(line.startswith("claims.json: [0]/estimate") for line in found)
    (after / "claims.json").unlink()
    assert any("only in" in line and "claims.json" in line for line in compare.differences(before, after))
    assert cli.main(["compare", str(before), str(after)]) == 1
    assert "differences" in capsys.readouterr().out


def test_keys_changed_on_purpose_can_be_left_out(tmp_path):
    before, after = _run(tmp_path / "a"), _run(tmp_path / "b", accuracy=0.25)
    assert compare.differences(before, after, frozenset({"accuracy", "estimate"})) == []
