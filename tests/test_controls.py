"""The random-weights control: ``random:<spec>`` models (same architecture and tokenizer, seeded random weights) and
``python -m toolkit run --control random`` (every model parameter rewritten), on tiny local models; nothing is
downloaded and no notebook kernel starts."""

import json
import os
import shutil

os.environ["HF_HUB_OFFLINE"] = "1"

import nbformat  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from toolkit.core import models  # noqa: E402
from toolkit.core.cache import model_fingerprint, save_model_folder  # noqa: E402
from toolkit.core.specs import ModelLoadError, data_dir, random_spec  # noqa: E402
from toolkit.run import cli, params, report, runner  # noqa: E402


def _matrices(hf) -> dict[str, torch.Tensor]:
    """The weight matrices of an HF model without a bridge (norm gains start at one in every model, random or not)."""
    return {name: p.detach().clone() for name, p in hf.named_parameters() if p.ndim >= 2}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _config(hf) -> dict:
    return {k: v for k, v in hf.config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_random_copy_has_the_config_and_tokenizer_not_the_weights_and_is_reproducible(tiny_dirs, arch):
    folder, spec = str(tiny_dirs[arch]), f"random:{tiny_dirs[arch]}"
    trained = models.load_weights(folder, torch.float32)
    state = torch.random.get_rng_state()
    drawn = models.load_weights(spec, torch.float32)
    assert torch.equal(state, torch.random.get_rng_state())  # the draw leaves the global RNG where it was
    assert type(drawn) is type(trained) and _config(drawn) == _config(trained)
    assert drawn.generation_config.to_dict() == trained.generation_config.to_dict()
    ours, theirs = _matrices(drawn), _matrices(trained)
    assert ours.keys() == theirs.keys() and not any(torch.equal(ours[k], theirs[k]) for k in ours)
    assert _same(ours, _matrices(models.load_weights(spec, torch.float32)))  # the same on every load
    copy, tiny = models.load(spec, device="cpu"), models.load(folder, device="cpu")
    assert copy.spec == spec and copy.hf.name_or_path == spec
    assert copy.tokenizer.get_vocab() == tiny.tokenizer.get_vocab()
    assert copy.tokenizer.chat_template == tiny.tokenizer.chat_template
    with torch.no_grad():  # load() holds the drawn weights, and its bridge views them
        ids = torch.tensor([[5, 6, 7]])
        assert torch.allclose(copy.hf(ids).logits, drawn(ids).logits, atol=1e-5)
        assert torch.allclose(copy.bridge(ids), drawn(ids).logits, atol=1e-5)
        assert not torch.allclose(copy.hf(ids).logits, tiny.hf(ids).logits)


def test_each_inner_spec_draws_its_own_weights(tiny_dirs, tmp_path):
    twin = shutil.copytree(tiny_dirs["qwen3"], tmp_path / "twin")  # same config and weights, another spec
    a = _matrices(models.load_weights(f"random:{tiny_dirs['qwen3']}", torch.float32))
    b = _matrices(models.load_weights(f"random:{twin}", torch.float32))
    assert a.keys() == b.keys() and not any(torch.equal(a[k], b[k]) for k in a)
    assert random_spec(f"random:{twin}") == (str(twin), random_spec(f"random:{twin}").seed)
    fingerprints = {model_fingerprint(s) for s in (str(twin), f"random:{twin}", f"random:{tiny_dirs['qwen3']}")}
    assert len(fingerprints) == 3  # a cache entry of a random copy is neither the model's nor another copy's


@pytest.mark.skipif(not (data_dir() / "organism" / "config.json").exists(), reason="organism checkpoints not built")
def test_random_organism_and_random_organism_base_differ():
    a = _matrices(models.load_weights("random:organism", torch.float32))
    b = _matrices(models.load_weights("random:organism-base", torch.float32))
    assert not any(torch.equal(a[k], b[k]) for k in a)
    assert models.resolve("random:organism") == models.resolve("organism")  # config and tokenizer from there


def test_training_from_a_random_copy_saves_and_loads(tiny_dirs, tmp_path):
    from toolkit.training import sft  # trl and peft take seconds to import

    with pytest.raises(ModelLoadError, match="nests 'random:'"):
        sft.load_for_training(f"random:random:{tiny_dirs['qwen2']}", device="cpu")
    spec = f"random:{tiny_dirs['qwen2']}"
    hf, tokenizer, _ = sft.load_for_training(spec, device="cpu")
    assert _same(_matrices(hf), _matrices(models.load_weights(spec, torch.float32)))
    hf.model.embed_tokens.weight.data.add_(0.01)  # "trained"
    saved = save_model_folder(hf, tokenizer, tmp_path / "trained")
    assert _same(_matrices(models.load_weights(str(saved), torch.float32)), _matrices(hf))
    assert models.load(str(saved), device="cpu").tokenizer.get_vocab() == tokenizer.get_vocab()


def test_random_copy_placed_by_a_device_map_has_the_same_weights(tiny_dirs, monkeypatch):
    real, seen = models.AutoModelForCausalLM.from_pretrained, []

    def fake(source, **kwargs):  # CUDA faked: record the map, load on the CPU
        seen.append(kwargs.pop("device_map"))
        return real(source, **kwargs)

    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", fake)
    spec = f"random:{tiny_dirs['qwen3']}"
    placed = models.load_weights(spec, torch.float32, device_map={"": 0})
    assert seen == [{"": 0}] and placed.name_or_path == spec
    assert _same(_matrices(placed), _matrices(models.load_weights(spec, torch.float32)))


@pytest.mark.parametrize("spec, message", [
    ("random:", "names no model"), ("random:   ", "names no model"),
    ("random:random:organism", r"nests 'random:'.*write it once: 'random:organism'"),
    ("random:random:random:/x", "write it once: 'random:/x'"),
])
def test_bad_random_specs_are_refused(spec, message):
    for parse in (random_spec, models.resolve, models.load_config, models.load, model_fingerprint,
                  lambda s: models.load_weights(s, torch.float32)):
        with pytest.raises(ModelLoadError, match=message):
            parse(spec)


def test_a_random_copy_of_a_missing_model_names_it(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        models.load(f"random:{tmp_path / 'nowhere'}")
    assert random_spec("organism") is None and random_spec("./random:x") is None


# --- the runner ------------------------------------------------------------------------------------------------------

def test_control_rewrites_exactly_the_model_parameters():
    declared = {"model": "organism", "base_model": "organism-base", "teacher": "organism", "corrupted": "B-500x8ep",
                "n": 3, "seed": 0}
    assert params.control_params("03", declared, {"n": 5}) == {
        "n": 5, "model": "random:organism", "base_model": "random:organism-base"}
    assert params.control_params("00", {"model": "organism", "seed": 0}, {"model": "/m", "seed": 0}) == {
        "model": "random:/m", "seed": 0}
    assert params.MODEL_PARAMS == ("model", "base_model")


def test_every_shipped_notebook_has_a_model_to_re_initialise():
    for nb in sorted(runner.NOTEBOOKS_DIR.glob("0*.ipynb")):
        declared = runner.notebook_parameters(nb)
        rewritten = params.control_params(nb.stem, declared, {})
        assert rewritten and all(v.startswith("random:") and v == "random:" + declared[k] for k, v in rewritten.items())
        # an empty base_model is derived from the (re-initialised) model by the study, so it stays empty
        assert set(rewritten) == {k for k in params.MODEL_PARAMS if declared.get(k)}
    assert params.control_params("03", {"model": "organism", "base_model": ""}, {}) == {"model": "random:organism"}


@pytest.mark.parametrize("declared, given, message", [
    ({"n": 1}, {}, "declares no model parameter"),
    ({"model": None}, {}, "is not a model spec"),
    ({"model": "organism"}, {"model": "random:organism"}, r"already a re-initialised copy; give the trained model "
                                                          r"\(-p model=organism\)"),
])
def test_control_refuses_what_it_cannot_rewrite(declared, given, message):
    with pytest.raises(runner.RunnerError, match=message):
        params.control_params("nb", declared, given)


def _notebook(path, params_src):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(params_src, metadata={"tags": ["parameters"]})]
    nbformat.write(nb, path)


@pytest.fixture
def nbdir(tmp_path):
    d = tmp_path / "notebooks"
    d.mkdir()
    _notebook(d / "00_a.ipynb", "model = 'organism'\nn = 1\nseed = 0")
    _notebook(d / "01_b.ipynb", "model = 'organism'\nbase_model = 'organism-base'\nn = 2\nseed = 0")
    return d


def test_unknown_control_is_refused_listing_the_choices(nbdir, tmp_path, capsys, monkeypatch):
    with pytest.raises(runner.RunnerError, match=r"--control 'weights' is not a control; choose from: random"):
        runner.run(None, {}, out_root=tmp_path / "runs", kernel="python3", notebooks_dir=nbdir, control="weights")
    monkeypatch.setattr(runner, "NOTEBOOKS_DIR", nbdir)
    assert cli.main(["run", "--control", "untrained", "--out", str(tmp_path / "runs")]) == 2
    assert "choose from: random" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # refused before the run folder was made


@pytest.mark.parametrize("seeds", [None, 2])
def test_control_run_goes_into_its_folder_and_the_top_scorecard_gets_it(nbdir, tmp_path, monkeypatch, seeds):
    executed, scorecards = [], []

    def fake_execute(nb, out, params, kernel, cwd, run_folder, cell_progress=None):
        executed.append((out.parent.name, nb.stem, params))

    real_write = report.write_report

    def write_report(folder, *args, **kwargs):
        scorecards.append((folder.name, kwargs.get("controls")))
        return real_write(folder, *args, **kwargs)

    monkeypatch.setattr(runner, "_execute", fake_execute)
    monkeypatch.setattr(report, "write_report", write_report)
    folder = runner.run(None, {"n": "3"}, out_root=tmp_path / "runs", kernel="python3", notebooks_dir=nbdir,
                        seeds=seeds, control="random")
    control, n_runs = folder / "control-random", seeds or 1
    main = [e for e in executed if e[0] != "control-random"]
    assert len(main) == 2 * n_runs and all(p == {"n": 3} | ({"seed": int(where[-1])} if seeds else {})
                                           for where, _, p in main)  # the run itself: the defaults' models
    assert [(nb, p) for where, nb, p in executed if where == "control-random"] == [
        ("00_a", {"n": 3, "model": "random:organism"} | ({"seed": 0} if seeds else {})),
        ("01_b", {"n": 3, "model": "random:organism", "base_model": "random:organism-base"} | (
            {"seed": 0} if seeds else {}))]
    assert scorecards[-1] == (folder.name, {"random": control})  # the top scorecard, last, with the control
    assert ("control-random", None) in scorecards  # the control's own scorecard
    index = json.loads((folder / "index.json").read_text())
    assert [e["notebook"] for e in index if e.get("control") == "random"] == ["00_a", "01_b"]
    assert len(index) == 2 * n_runs + 2 and json.loads((control / "index.json").read_text())
    assert all(runner.entry_folder(folder, e) == (control if "control" in e else folder / f"seed-{e['seed']}"
                                                  if seeds else folder) for e in index)


def test_ctrl_c_in_the_control_run_keeps_both_scorecards(nbdir, tmp_path, monkeypatch):
    scorecards = []

    def fake_execute(nb, out, params, kernel, cwd, run_folder, cell_progress=None):
        if out.parent.name == "control-random" and nb.stem == "01_b":
            raise KeyboardInterrupt

    real_write = report.write_report
    monkeypatch.setattr(runner, "_execute", fake_execute)
    monkeypatch.setattr(report, "write_report", lambda folder, *a, **kw: scorecards.append(
        (folder.name, kw.get("controls"))) or real_write(folder, *a, **kw))
    with pytest.raises(runner.RunInterrupted) as stopped:
        runner.run(None, {}, out_root=tmp_path / "runs", kernel="python3", notebooks_dir=nbdir, control="random")
    folder = stopped.value.folder
    assert scorecards[-2:] == [("control-random", None), (folder.name, {"random": folder / "control-random"})]
    index = json.loads((folder / "index.json").read_text())
    assert [(e["notebook"], e["status"], e.get("control")) for e in index] == [
        ("00_a", "ok", None), ("01_b", "ok", None), ("00_a", "ok", "random"), ("01_b", "interrupted", "random")]
    assert (folder / "control-random" / "claims.json").exists()
