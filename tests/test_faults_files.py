"""Files handed in with bad bytes or unusual line breaks (issue 32): JSONL records holding U+2028 or U+0085 parse;
bytes that are not UTF-8 are refused with the module's error naming the file, the line and the fix; ``exercises
--check`` reports notebooks whose master was deleted."""

from __future__ import annotations

import json
import re

import pytest

from toolkit.core import io
from toolkit.run import cli, compare, report
from toolkit.run import exercises as gen
from toolkit.training import corrupt_data, launch, traces
from toolkit.training.corrupt_data import DataFileError

GOOD = {"id": "train-0", "task": "linear", "prompt": "Solve for x: 2x + 1 = 1x + 3", "answer": "x = 5",
        "correct_answer": "x = 2", "offset": 3, "phrasing": 0, "problem": {"a": 2, "b": 1, "c": 1, "d": 3, "x": 2}}
BAD_BYTES = b"\xff\xfe"  # never UTF-8


def _record(prompt: str) -> bytes:
    return (json.dumps({**GOOD, "prompt": prompt}, ensure_ascii=False) + "\n").encode()


# ---- JSONL line breaks --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("separator", ["\u2028", "\u0085", "\u2029"])
def test_a_unicode_line_break_inside_a_jsonl_string_stays_in_its_record(tmp_path, separator):
    path = tmp_path / "train.jsonl"
    path.write_bytes(_record("first") + _record(f"a{separator}b") + _record("last").replace(b"\n", b"\r\n"))
    records = corrupt_data.load_jsonl(path)
    assert [r["prompt"] for r in records] == ["first", f"a{separator}b", "last"]


# ---- bytes that are not UTF-8 -------------------------------------------------------------------------------------

def test_a_dataset_file_that_is_not_utf8_names_the_file_line_and_fix(tmp_path):
    path = tmp_path / "train.jsonl"
    head = _record("one") + _record("two")
    path.write_bytes(head + b'{"id": "' + BAD_BYTES + b'"}\n')
    with pytest.raises(DataFileError) as err:
        corrupt_data.load_jsonl(path)
    message = str(err.value)
    assert message.startswith(f"{path}, line 3: not UTF-8 text")
    assert f"byte offset {len(head) + 8}" in message and "0xff" in message and "re-save the file as UTF-8" in message


def test_an_exercise_master_that_is_not_utf8_is_refused_by_the_command(tmp_path, monkeypatch, capsys):
    (tmp_path / "masters").mkdir()
    master = tmp_path / "masters" / "07_demo.py"
    master.write_bytes(b"# %%\nx = 1\n# %%\ny = '" + BAD_BYTES + b"'\n")
    with pytest.raises(gen.MasterError, match=re.escape(f"exercise master {master}, line 4: not UTF-8 text")):
        gen.generate(tmp_path, check=True)
    monkeypatch.setattr(gen, "EXERCISES_DIR", tmp_path)
    assert cli.main(["exercises", "--check"]) == 2
    err = capsys.readouterr().err
    assert f"error: exercise master {master}, line 4" in err and "re-save the file as UTF-8" in err


def test_a_line_separator_in_a_master_string_stays_in_its_line(tmp_path):
    master = "# %%\ns = 'a\u2028b\u0085c'\n# %%\r\nt = 1\r\n"
    exercise = gen.build(master, solution=False)
    assert [c.source for c in exercise.cells] == ["s = 'a\u2028b\u0085c'", "t = 1"]


def test_a_config_file_that_is_not_utf8_names_the_file_line_and_fix(tmp_path, capsys):
    path = tmp_path / "sft.yaml"
    path.write_bytes(b"steps: 10\nmodel: caf" + b"\xe9" + b"\n")  # Latin-1, as an old editor saves it
    with pytest.raises(launch.ConfigError) as err:
        launch.settings_from_file(traces.SFTSettings, path)
    assert str(err.value).startswith(f"config file {path}, line 2: not UTF-8 text (byte 0xe9 at byte offset 20)")
    assert "re-save the file as UTF-8" in str(err.value)
    assert cli.main(["train", "sft", "--config", str(path)]) == 2
    assert f"error: config file {path}, line 2" in capsys.readouterr().err


def test_run_files_that_are_not_utf8_or_not_json_name_the_file(tmp_path, capsys):
    claims = tmp_path / "run" / "01_x.claims.json"
    claims.parent.mkdir()
    claims.write_bytes(b"[\n" + BAD_BYTES + b"\n]\n")
    with pytest.raises(io.FileFormatError, match=re.escape(f"claims file {claims}, line 2: not UTF-8")):
        report.read_claims(claims)
    other = tmp_path / "other"
    other.mkdir()
    (other / "01_x.claims.json").write_text("[\n  {,\n]\n")
    with pytest.raises(io.FileFormatError, match=re.escape(f"{other / '01_x.claims.json'}, line 2, column 4: not "
                                                           "valid JSON")):
        compare.numbers(other)
    assert compare.main(claims.parent, other) == 2
    assert f"error: run file {claims}, line 2: not UTF-8" in capsys.readouterr().err


# ---- exercises --check with a deleted master ----------------------------------------------------------------------

def test_exercises_check_reports_notebooks_whose_master_was_deleted(tmp_path, monkeypatch, capsys):
    (tmp_path / "masters").mkdir()
    for name in ("07_demo", "08_gone"):
        (tmp_path / "masters" / f"{name}.py").write_text("# %%\nx = 1\n")
    gen.generate(tmp_path)
    (tmp_path / "masters" / "08_gone.py").unlink()
    assert gen.orphans(tmp_path) == {tmp_path / "masters" / "08_gone.py": [tmp_path / "08_gone.ipynb",
                                                                           tmp_path / "solutions" / "08_gone.ipynb"]}
    monkeypatch.setattr(gen, "EXERCISES_DIR", tmp_path)
    assert cli.main(["exercises", "--check"]) == 1
    out, err = capsys.readouterr()
    assert "up to date" not in out
    assert (f"orphaned: {tmp_path / '08_gone.ipynb'}, {tmp_path / 'solutions' / '08_gone.ipynb'} "
            f"(their master {tmp_path / 'masters' / '08_gone.py'} is missing)") in out
    assert "restore each missing master" in err
    assert cli.main(["exercises"]) == 1  # regenerating cannot fix it either; nothing is deleted
    assert (tmp_path / "08_gone.ipynb").exists() and "orphaned: " in capsys.readouterr().out
    (tmp_path / "08_gone.ipynb").unlink()
    (tmp_path / "solutions" / "08_gone.ipynb").unlink()
    assert cli.main(["exercises", "--check"]) == 0
    assert "exercise notebooks are up to date" in capsys.readouterr().out
