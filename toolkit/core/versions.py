"""The supported versions of the toolkit's dependencies, checked at ``import toolkit`` before any of them is imported.

The ranges have one home, ``pyproject.toml``'s ``[project] dependencies``: read from the installed distribution's
metadata, or from ``pyproject.toml`` itself when the package runs from a checkout that was never installed. A package
installed at a version outside its range raises :class:`UnsupportedVersionError`, one line naming the package, the
version found, the supported range and the command that fixes it, instead of an ``AttributeError`` deep inside.
A dependency that is not installed at all is left to its own ``ImportError``.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "reasoning-circuits-toolkit"
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


class UnsupportedVersionError(ImportError):
    """A dependency is installed at a version outside the toolkit's supported range."""


def requirements() -> list[str]:
    """The toolkit's own requirement strings (no extras): the installed metadata's, else ``pyproject.toml``'s."""
    if PYPROJECT.exists():  # a checkout (editable or not installed): its pyproject is the truth
        project = tomllib.loads(PYPROJECT.read_text()).get("project", {})
        if project.get("name") == DISTRIBUTION:
            return list(project["dependencies"])
    try:
        return [r for r in metadata.requires(DISTRIBUTION) or [] if "extra ==" not in r]
    except metadata.PackageNotFoundError:
        return []


def problems(requirement_strings: list[str] | None = None) -> list[str]:
    """One line per installed dependency whose version lies outside its range."""
    from packaging.requirements import Requirement
    from packaging.version import InvalidVersion

    lines = []
    for text in requirements() if requirement_strings is None else requirement_strings:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            found = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            continue
        try:
            ok = req.specifier.contains(found, prereleases=True)
        except InvalidVersion:
            ok = True  # a local build with a version packaging cannot read: let it run
        if not ok:
            lines.append(f"{req.name} {found} is installed, but {DISTRIBUTION} supports {req.name}{req.specifier}; "
                         f"install a supported one: pip install '{req.name}{req.specifier}'")
    return lines


def check_versions() -> None:
    """Raise :class:`UnsupportedVersionError` (its first line names the first bad package) when a dependency is
    installed at an unsupported version."""
    if bad := problems():
        raise UnsupportedVersionError("\n".join(bad))
