"""The parameters of a run: what each notebook declares, ``-p key=value`` typed by its defaults, and which of them
name a model (rewritten by a control run).

Parameters (``-p key=value``) are typed by the default each chosen notebook declares (:func:`coerce_param`) and
checked before the run folder is made: a bool takes ``true``/``false`` in any case (also ``yes``/``no``, ``1``/``0``),
an int a whole number, a float any number, a list or tuple a Python literal of one (its elements checked against the
default's), a dict a Python dict, a str the text as given (a non-string other than a path, from a Python caller, is
refused); a parameter whose default is ``None`` or not a literal takes a Python literal, else the text. A wrong
value is refused naming the notebook, the parameter, the value, the expected type and the default. A model
parameter (:data:`MODEL_PARAMS`) given with ``-p`` is checked as a model spec from its text alone, before any kernel
starts (:func:`model_spec_problem`: ``organism@x``, ``random:``, a missing folder), naming the accepted forms.

Controls (``--control random``, :func:`control_params`): the same study on a re-initialised copy of every model it
studies. The parameters that name one are :data:`MODEL_PARAMS`; each becomes ``random:<value>`` (its ``-p`` value,
else the notebook's default; :func:`toolkit.core.specs.random_spec`).
"""

from __future__ import annotations

import ast
import numbers
import os
import re
from pathlib import Path

import nbformat

from toolkit.core.specs import RANDOM_PREFIX, ModelLoadError, organism_spec, random_spec


class RunnerError(ValueError):
    """A run that cannot start (unknown notebook, undeclared parameter, bad ``key=value``, wrongly typed value,
    unknown control)."""


class Expression(str):
    """A parameter default that is not a literal: its source text (e.g. ``torch.float32``)."""


def notebook_parameters(path: str | Path) -> dict[str, object]:
    """Names and default values assigned in the notebook's first code cell tagged ``parameters``.

    Values that are not literals are returned as their source text, an :class:`Expression`."""
    nb = nbformat.read(path, as_version=4)
    cell = next((c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])),
                None)
    if cell is None:
        return {}
    params: dict[str, object] = {}
    for node in ast.parse(cell.source).body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        try:
            default = ast.literal_eval(value)
        except (ValueError, TypeError, SyntaxError):
            default = Expression(ast.get_source_segment(cell.source, value))
        for target in targets:
            if isinstance(target, ast.Name):
                params[target.id] = default
    return params


def parse_params(items: list[str]) -> dict[str, str]:
    """``["n=20", "think=true", "name=a=b"]`` → ``{"n": "20", "think": "true", "name": "a=b"}``: the text of each
    value, typed later against each notebook's defaults (:func:`coerce_param`)."""
    params: dict[str, str] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise RunnerError(f"parameter {item!r} is not of the form key=value")
        params[key] = text
    return params


def _literal(text: str) -> object:
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return text


BOOL_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _as_number(value: object, kind: type) -> object:
    """``value`` as an int (``kind`` int) or a float (``kind`` float), or None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral if kind is int else numbers.Real):
        return kind(value)
    if isinstance(value, str):
        try:
            return kind(value.strip())
        except ValueError:
            return None
    return None


def _as_item(value: object, kind: type) -> object:
    """One element of a list parameter as the type of the default's elements, or ``_BAD`` when it is not one."""
    if kind in (int, float):
        number = None if isinstance(value, str) else _as_number(value, kind)
        return _BAD if number is None else number
    return value if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)) else _BAD


_BAD = object()


def coerce_param(notebook: str, name: str, value: object, default: object) -> object:
    """``value`` (a ``-p`` text, or a typed value from a Python caller) as the type of the notebook's ``default``.

    Raises :class:`RunnerError` naming ``notebook``, the parameter, the value, the expected type and the default."""
    typed_default = isinstance(default, bool | int | float | str | list | tuple | dict)
    if default is None or isinstance(default, Expression) or not typed_default:
        return _literal(value) if isinstance(value, str) else value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in BOOL_WORDS:
            return BOOL_WORDS[value.strip().lower()]
        expected, fix = "a bool", "give true or false"
    elif isinstance(default, int | float):
        kind = int if isinstance(default, int) else float
        number = _as_number(value, kind)
        if number is not None:
            return number
        expected, fix = ("an int", "give a whole number") if kind is int else ("a float", "give a number")
    elif isinstance(default, str):
        if isinstance(value, str | os.PathLike):
            return os.fspath(value)
        expected, fix = "a str", "give text"
    else:
        kind = type(default)
        given = _literal(value) if isinstance(value, str) else value
        if isinstance(default, dict):
            ok, expected = isinstance(given, dict), "a dict"
        else:
            ok, expected = isinstance(given, list | tuple), f"a {kind.__name__}"
            item_types = {type(x) for x in default}
            if len(item_types) == 1:  # elements checked against a non-empty default's (common) element type
                (item_type,) = item_types
                expected += f" of {item_type.__name__}"
                given = [_as_item(x, item_type) for x in given] if ok else given
                ok = ok and all(x is not _BAD for x in given)
        if ok:
            return kind(given)
        fix = f"give a Python {kind.__name__} (quoted for the shell), e.g. -p \"{name}={default!r}\""
    raise RunnerError(f"{notebook}: parameter {name}={value!r} is not {expected} (default {default!r}); {fix}")


MODEL_FORMS = ("'organism', 'organism-base', 'organism@N' or 'organism-base@N' (N: a replicate's seed, a whole "
               "number), 'random:<spec>' (that model re-initialised), a model folder ('/abs/path', './relative' to "
               "the notebooks, '~/...'), or a hub name such as 'Qwen/Qwen3-0.6B'")
_HUB_NAME = re.compile(r"[\w.-]+(/[\w.-]+)?")


def model_spec_problem(spec: str, cwd: Path) -> str | None:
    """Why ``spec`` names no model, from its text alone (nothing loaded, no network), or ``None``: a malformed
    organism or ``random:`` spec (:mod:`toolkit.core.specs`), a folder path (``/``, ``.``, ``~``; relative to ``cwd``,
    the kernel's working folder) that does not exist, or a name that is neither a folder in ``cwd`` nor a hub name."""
    if not spec.strip():
        return "an empty spec names no model"
    try:
        randomised = random_spec(spec)
        inner = randomised.inner if randomised else spec
        if organism_spec(inner) is not None:
            return None
    except ModelLoadError as err:
        return str(err)
    path = Path(inner).expanduser()
    path = path if path.is_absolute() else cwd / path
    if inner.startswith((".", "/", "~")):  # a folder, as toolkit.core.models.resolve reads it
        old = path.with_name(path.name + ".old")  # a folder swap a kill interrupted: resolve finishes it
        return None if path.is_dir() or old.is_dir() else f"the model folder {path} does not exist"
    if path.exists() or _HUB_NAME.fullmatch(inner):
        return None
    return f"{inner!r} is not an organism spec, an existing folder or a hub name (owner/name)"


def _typed_params(notebooks: list[Path], params: dict) -> dict[Path, dict]:
    """Each notebook's ``params`` typed by its own defaults; every undeclared or ill-typed one, and every model
    parameter (:data:`MODEL_PARAMS`) that names no model (:func:`model_spec_problem`), refused at once."""
    undeclared, wrong, typed, specs = [], [], {}, {}
    for nb in notebooks:
        declared = notebook_parameters(nb)
        unknown = sorted(set(params) - set(declared))
        if unknown:
            undeclared.append(f"{nb.stem} does not declare {', '.join(unknown)}; "
                              f"it declares: {', '.join(declared) or '(none)'}")
        typed[nb] = {}
        for name in [n for n in params if n in declared]:
            try:
                typed[nb][name] = coerce_param(nb.stem, name, params[name], declared[name])
            except RunnerError as e:
                wrong.append(str(e))
                continue
            value = typed[nb][name]
            if name in MODEL_PARAMS and isinstance(value, str) and (name, value) not in specs:
                problem = model_spec_problem(value, nb.parent)
                specs[name, value] = problem and f"{name}={value!r}: {problem}"
    bad_specs = [line for line in specs.values() if line]
    bad_specs += [f"(a model spec is one of: {MODEL_FORMS})"] if bad_specs else []
    problems = [f"refusing to run, {what}:\n  " + "\n  ".join(lines) for what, lines in
                (("undeclared parameters", undeclared), ("parameters of the wrong type", wrong),
                 ("model parameters that name no model", bad_specs)) if lines]
    if problems:
        raise RunnerError("\n".join(problems))
    return typed


CONTROLS = {"random": RANDOM_PREFIX}  # --control NAME: the prefix its run puts before every model parameter's value
MODEL_PARAMS = ("model", "base_model")
"""The notebook parameters that name a model under study, rewritten by a control run: every notebook's ``model``
(notebook 04's start model of all three arms) and notebook 03's ``base_model``. Notebook 04's ``teacher`` is not
one: it writes the distillation arm's training data (kept, as the data sets are), and a random teacher would answer
none of its traces right, leaving that arm nothing to train on. Notebook 02's ``corrupted`` names a preset that is
trained from ``model`` (so from the random copy in a control run), or a folder, kept as given."""


def check_control(control: str) -> None:
    """Refuse a ``--control`` that is not one of :data:`CONTROLS`, listing them."""
    if control not in CONTROLS:
        raise RunnerError(f"--control {control!r} is not a control; choose from: {', '.join(CONTROLS)}")


def control_params(notebook: str, declared: dict[str, object], params: dict, control: str = "random") -> dict:
    """The parameters of ``notebook``'s run under ``control``: ``params`` (typed) with every :data:`MODEL_PARAMS` the
    notebook ``declared`` set to ``random:<value>`` (the given value, else the default), the rest unchanged.

    Refused (:class:`RunnerError`): an unknown control; a notebook that declares no model parameter (its control run
    would be the run itself); a model parameter that is not a spec string, or already ``random:...``."""
    check_control(control)
    prefix, names = CONTROLS[control], [n for n in MODEL_PARAMS if n in declared]
    if not names:
        raise RunnerError(f"--control {control}: {notebook} declares no model parameter ({', '.join(MODEL_PARAMS)}), "
                          "so it has no model to re-initialise; leave it out of a control run")
    rewritten = dict(params)
    for name in names:
        value = params.get(name, declared[name])
        if not isinstance(value, str) or isinstance(value, Expression):
            raise RunnerError(f"--control {control}: {notebook}'s {name} = {value!r} is not a model spec; give one "
                              f"with -p {name}=SPEC")
        if not value:  # derived from the (re-initialised) model by the study: toolkit.core.specs.derive_base_model
            continue
        if value.startswith(prefix):
            raise RunnerError(f"--control {control}: {notebook}'s {name}={value!r} is already a re-initialised copy; "
                              f"give the trained model (-p {name}={value.removeprefix(prefix)}) and the control "
                              "run re-initialises it")
        rewritten[name] = prefix + value
    return rewritten
