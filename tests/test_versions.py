"""Supported versions: the ranges of pyproject.toml are checked at import, one clear line for a package outside its
range; the lock and environment.yml agree with them; the console command exists."""

import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from toolkit.core import versions

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    from packaging.requirements import Requirement

    return Requirement(requirement).name.lower().replace("_", "-")


def test_the_installed_versions_lie_in_their_ranges():
    assert versions.problems() == []
    assert versions.requirements() == PROJECT["dependencies"]


def test_a_version_below_its_range_is_one_line_naming_package_version_and_range(monkeypatch):
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "5.10.0" if name == "transformers" else real(name))
    with pytest.raises(versions.UnsupportedVersionError) as err:
        versions.check_versions()
    message = str(err.value)
    assert message == ("transformers 5.10.0 is installed, but reasoning-circuits-toolkit supports transformers>=5.17; "
                       "install a supported one: pip install 'transformers>=5.17'")


def test_import_toolkit_refuses_an_unsupported_version_before_importing_it(tmp_path):
    """A real interpreter, with transformers' metadata saying 5.0.0: ``import toolkit`` stops with the one line, and
    transformers itself was never imported."""
    code = ("import sys\nfrom importlib import metadata\nreal = metadata.version\n"
            "metadata.version = lambda n: '5.0.0' if n == 'transformers' else real(n)\n"
            "try:\n    import toolkit\nexcept ImportError as e:\n"
            "    print(type(e).__name__, e, 'transformers' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert out.stdout.strip() == ("UnsupportedVersionError transformers 5.0.0 is installed, but "
                                  "reasoning-circuits-toolkit supports transformers>=5.17; install a supported one: "
                                  "pip install 'transformers>=5.17' False")


def test_environment_yml_lists_the_same_packages_as_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {_name(r) for r in pip if not r.startswith("-")}
    assert listed == {_name(r) for r in PROJECT["dependencies"]}
    for requirement in pip:  # the same ranges, not just the same names
        if not requirement.startswith("-"):
            assert requirement in PROJECT["dependencies"], requirement


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-compat.lock"])
def test_each_lock_pins_every_dependency_within_its_range(lock):
    from packaging.requirements import Requirement

    pins = {}
    for line in (ROOT / lock).read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split("#")[0].strip().split("==")
            pins[_name(name)] = version.split(";")[0].strip()
    for text in PROJECT["dependencies"]:
        req = Requirement(text)
        assert _name(req.name) in pins, f"{lock} does not pin {req.name}"
        assert req.specifier.contains(pins[_name(req.name)], prereleases=True), (lock, req, pins[_name(req.name)])
    if lock == "requirements-compat.lock":  # the lowest supported versions, the GPU image's among them
        for text in PROJECT["dependencies"]:
            req = Requirement(text)
            lowest = min((s.version for s in req.specifier if s.operator == ">="), default=None)
            assert lowest is None or pins[_name(req.name)].split("+")[0] in (lowest, lowest + ".0"), (req, pins)


def test_the_console_command_is_declared_and_runs():
    assert PROJECT["scripts"] == {"toolkit": "toolkit.run.cli:main"}
    script = Path(sys.executable).with_name("toolkit")
    assert script.exists(), "reinstall the package (make setup) to get the toolkit command"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True)
    assert "build-organism" in out.stdout
