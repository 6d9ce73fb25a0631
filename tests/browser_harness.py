"""Drive JupyterLab in headless Chromium for the browser tests.

Debian's ``/usr/bin/chromium`` is driven by Playwright-python (never ``playwright install``). JupyterLab runs
from this Python environment on 127.0.0.1 with a token and its own config, runtime, settings and workspace
folders. Both are stopped by their process ids, with their process groups and descendants, even when a test
fails. Every wait is on a real state (kernel status, execution counts, page content), never a fixed sleep.

A notebook declares its checks in ``metadata["toolkit"]``: ``test_parameters`` (injected into the copy that is
run), ``widgets`` (steps ``{"description": ..., "action": "slider" | "dropdown" | "toggle" | "click"}``) and
``circuitsvis`` (how many circuitsvis views must render).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import nbformat
import psutil
from playwright.sync_api import Browser, Locator, Page, sync_playwright
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from toolkit.run.runner import ensure_kernel

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
KERNEL = "reasoning-circuits"
RUN_ALL_TIMEOUT = 1800.0
STEP_TIMEOUT = 60.0
VIEWPORT = {"width": 1400, "height": 1000}
LAB_SETTINGS = {  # user settings of the isolated Lab: no autosave, no network checks, every cell in the DOM
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
}
# Page helpers; `window.jupyterapp` is there because Lab runs with expose_app_in_browser.
HELPERS_JS = r"""
window.__lab = {
  panel: path => [...window.jupyterapp.shell.widgets('main')].find(w => w.context && w.context.path === path),
  // Run All is over: an error stopped it, or every code cell has its count and the kernel is idle.
  finished(path) {
    const s = this.state(path);
    return s.errors.length > 0 || (s.pending === 0 && s.status === 'idle');
  },
  state(path) {
    const panel = this.panel(path);
    if (!panel) return null;
    const cells = panel.content.widgets.filter(c => c.model.type === 'code');
    const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
    return {
      kernel: kernel ? kernel.name : null,
      status: kernel ? kernel.status : null,
      pending: cells.filter(c => c.model.executionCount === null).length,
      errors: cells.flatMap(c => c.model.outputs.toJSON().filter(o => o.output_type === 'error')
                                  .map(o => `${o.ename}: ${o.evalue}`)),
    };
  },
  // What a widget action must change: text and image sources of the ipywidgets.Output views in a cell.
  snapshot: cell => [...cell.querySelectorAll('.widget-output')]
    .map(o => o.innerText + [...o.querySelectorAll('img')].map(i => i.src).join(' ')).join('\n'),
  // Errors shown in a cell's Output views (Lab renders them like stderr, so look for the traceback).
  tracebacks: cell => [...cell.querySelectorAll('.widget-output [data-mime-type$="stderr"]')]
    .map(e => e.innerText.trim()).filter(t => t.includes('Traceback (most recent call last)'))
    .map(t => t.split('\n').pop()),
  // Resolves once the kernel has handled every message sent before it (shell messages run in order).
  barrier: path => window.__lab.panel(path).sessionContext.session.kernel
    .requestExecute({code: '', silent: true, store_history: false}).done.then(() => true),
  circuitsvis: () => {
    const roots = [...document.querySelectorAll('[id^="circuits-vis-"]')];
    const drawn = roots.filter(r => r.querySelector(':scope *:not(script)') && r.offsetHeight > 0);
    return {roots: roots.length, rendered: drawn.length};
  },
};
"""
CELL = "xpath=ancestor::div[contains(concat(' ', normalize-space(@class), ' '), ' jp-Cell ')][1]"


def install() -> None:
    """Install what the browser tests need as CI does: Debian's chromium (``.ci/install-browser``, idempotent)
    and the ``reasoning-circuits`` kernelspec."""
    subprocess.run([str(REPO / ".ci" / "install-browser")], check=True)
    ensure_kernel(KERNEL)


def stop_process_tree(pid: int, timeout: float = 10.0) -> None:
    """Stop ``pid`` (a process-group leader), its group and its descendants: SIGTERM, then SIGKILL."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    with suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        with suppress(psutil.NoSuchProcess):
            proc.kill()
    with suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=timeout)


@dataclass
class Lab:
    url: str  # ends with "/"
    token: str
    root: Path  # the folder Lab serves


@contextmanager
def jupyter_lab(workdir: Path, timeout: float = 120.0) -> Iterator[Lab]:
    """Run JupyterLab on 127.0.0.1 (free port, random token), every folder it writes inside ``workdir``."""
    names = ("root", "config", "runtime", "settings", "workspaces", "ipython")
    dirs = {name: workdir / name for name in names}
    for folder in dirs.values():
        folder.mkdir(parents=True, exist_ok=True)
    for plugin, values in LAB_SETTINGS.items():
        path = dirs["settings"] / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    token = secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_TOKEN": token, "HF_HUB_OFFLINE": "1", "IPYTHONDIR": str(dirs["ipython"]),
           "JUPYTER_CONFIG_DIR": str(dirs["config"]), "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
           "TOOLKIT_RUN_DIR": str(workdir / "run")}
    env.pop("TOOLKIT_HEADLESS", None)  # explorers run in interactive mode
    args = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
            "--ServerApp.ip=127.0.0.1", "--ServerApp.port=0",
            f"--ServerApp.root_dir={dirs['root']}", f"--LabApp.user_settings_dir={dirs['settings']}",
            f"--LabApp.workspaces_dir={dirs['workspaces']}", "--LabApp.expose_app_in_browser=True",
            "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    log_path = workdir / "jupyterlab.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, cwd=dirs["root"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            info = dirs["runtime"] / f"jpserver-{proc.pid}.json"
            url = _wait_for_server(proc, info, token, timeout, log_path)
            yield Lab(url=url, token=token, root=dirs["root"])
        finally:
            stop_process_tree(proc.pid)
            proc.wait()


def _wait_for_server(proc: subprocess.Popen, info: Path, token: str, timeout: float, log: Path) -> str:
    """Wait until the server answers ``/api/status``; return its base URL."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with suppress(OSError, ValueError):  # info file not written yet / server not listening yet
            url = json.loads(info.read_text())["url"]
            request = urllib.request.Request(f"{url}api/status", headers={"Authorization": f"token {token}"})
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return url
        time.sleep(0.2)
    raise RuntimeError(f"JupyterLab did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@contextmanager
def chromium() -> Iterator[Browser]:
    """Headless Debian Chromium under Playwright; its process group is stopped by id even if closing fails."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        pid = None
        try:
            info = browser.new_browser_cdp_session().send("SystemInfo.getProcessInfo")["processInfo"]
            pid = next(p["id"] for p in info if p["type"] == "browser")
            yield browser
        finally:
            with suppress(PlaywrightError):
                browser.close()
            if pid is not None:
                stop_process_tree(pid)


def prepare_notebook(source: Path, folder: Path) -> dict:
    """Write the copy of ``source`` that is run into ``folder``: outputs cleared, kernel ``KERNEL``, test
    parameters in a cell after the ``parameters`` cell. Returns the notebook's declared checks."""
    nb = nbformat.read(source, as_version=4)
    checks = nb.metadata.get("toolkit", {})
    params = checks.get("test_parameters", {})
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    if params:
        tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
        if not tagged:
            raise ValueError(f"{source.name} declares test_parameters but has no cell tagged 'parameters'")
        code = "\n".join(f"{name} = {value!r}" for name, value in params.items())
        injected = nbformat.v4.new_code_cell(code, metadata={"tags": ["injected-parameters"]})
        nb.cells.insert(tagged[0] + 1, injected)
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": KERNEL, "language": "python"}
    nbformat.write(nb, folder / source.name)
    return checks


class LabNotebook:
    """A notebook open in JupyterLab, in a browser context that can reach nothing but 127.0.0.1."""

    def __init__(self, page: Page, path: str):
        self.page, self.path = page, path

    def state(self) -> dict:
        """Kernel name and status, code cells without an execution count, and error outputs."""
        return self.page.evaluate("path => __lab.state(path)", self.path)

    def run_all(self, timeout: float = RUN_ALL_TIMEOUT) -> None:
        """Wait for an idle kernel, Run All, wait until every code cell has run; fail on any error output."""
        idle = re.compile(r"\| Idle$")
        status = self.page.locator("#jp-main-statusbar .jp-StatusBar-TextItem", has_text=idle)
        status.wait_for()
        assert self.state()["kernel"] == KERNEL, self.state()
        self.page.evaluate("() => { window.jupyterapp.commands.execute('runmenu:run-all'); }")
        try:
            self.page.wait_for_function("path => __lab.finished(path)", arg=self.path,
                                        timeout=timeout * 1000, polling=500)
        except PlaywrightTimeout:
            message = f"{self.path}: Run All unfinished after {timeout:.0f} s: {self.state()}"
            raise AssertionError(message) from None
        state = self.state()
        assert not state["errors"], f"{self.path}: cells raised {state['errors']}"

    def operate(self, description: str, action: str, timeout: float = STEP_TIMEOUT) -> None:
        """Operate the widget labelled ``description``; assert that the ipywidgets.Output views of its cell
        show something new within ``timeout`` seconds, then wait until the kernel has handled the action."""
        control = self._control(description, action)
        control.wait_for(timeout=timeout * 1000)
        try:  # an Output view is attached with its content, so once it is there the snapshot is complete
            control.locator(CELL).locator(".widget-output").first.wait_for(timeout=timeout * 1000)
        except PlaywrightTimeout:
            raise AssertionError(f"the cell of {description!r} shows no ipywidgets.Output") from None
        cell = control.locator(CELL).element_handle()
        before = cell.evaluate("cell => __lab.snapshot(cell)")
        if action == "slider":
            value = control.get_attribute("aria-valuenow")
            control.press("ArrowRight")  # one key press is one value change, so one kernel update to wait for
            if control.get_attribute("aria-valuenow") == value:  # already at the maximum
                control.press("ArrowLeft")
        elif action == "dropdown":
            options = control.locator("option").count()
            control.select_option(index=(control.evaluate("s => s.selectedIndex") + 1) % options)
        else:
            control.click()
        try:
            self.page.wait_for_function("([cell, before]) => __lab.snapshot(cell) !== before",
                                        arg=[cell, before], timeout=timeout * 1000, polling=250)
        except PlaywrightTimeout:
            message = f"{action} {description!r}: the output did not change within {timeout:.0f} s"
            raise AssertionError(message) from None
        self.page.evaluate("path => __lab.barrier(path)", self.path)
        assert cell.evaluate("cell => __lab.snapshot(cell)") != before
        errors = cell.evaluate("cell => __lab.tracebacks(cell)")
        assert not errors, f"{action} {description!r} raised {errors}"

    def _control(self, description: str, action: str) -> Locator:
        """The element to operate for a widget whose description is ``description``."""
        exact = re.compile(rf"^\s*{re.escape(description)}\s*$")
        labelled = self.page.locator(".widget-label", has_text=exact)
        if action == "slider":
            return self.page.locator(".widget-slider", has=labelled).locator(".noUi-handle")
        if action == "dropdown":
            return self.page.locator(".widget-dropdown", has=labelled).locator("select")
        if action == "toggle":
            text = self.page.get_by_text(description, exact=True)
            checkbox = self.page.locator(".widget-checkbox", has=text)
            return checkbox.locator("input").or_(self.page.locator(".widget-toggle-button", has_text=exact))
        if action == "click":
            return self.page.locator(".widget-button", has_text=exact)
        raise ValueError(f"unknown widget action {action!r}; use slider, dropdown, toggle or click")

    def screenshot(self, path: Path) -> None:
        """Save a screenshot of the whole notebook (to ~10000 px): the viewport grows to fit it first."""
        scroller = self.page.locator(".jp-NotebookPanel .jp-WindowedPanel-outer").element_handle()
        height = min(scroller.evaluate("e => e.scrollHeight"), 9800)
        self.page.set_viewport_size({**VIEWPORT, "height": max(height + 200, VIEWPORT["height"])})
        with suppress(PlaywrightTimeout):  # Lab's chrome may be taller than 200 px: then part is cut off
            self.page.wait_for_function("([e, h]) => e.clientHeight >= h", arg=[scroller, height],
                                        timeout=5000)
        scroller.evaluate("e => { e.scrollTop = 0; }")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=path)

    def check_circuitsvis(self, expected: int, timeout: float = STEP_TIMEOUT) -> None:
        """Assert that exactly ``expected`` circuitsvis views exist and each has rendered content."""
        with suppress(PlaywrightTimeout):
            self.page.wait_for_function("n => __lab.circuitsvis().rendered >= n", arg=expected,
                                        timeout=timeout * 1000, polling=250)
        found = self.page.evaluate("() => __lab.circuitsvis()")
        assert found == {"roots": expected, "rendered": expected}, f"{expected} circuitsvis wanted: {found}"


@contextmanager
def open_notebook(browser: Browser, lab: Lab, path: str) -> Iterator[LabNotebook]:
    """Open ``path`` (relative to the Lab root) in a fresh browser context, closed afterwards."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(2 * STEP_TIMEOUT * 1000)  # page load, kernel start, clicks under load
    try:
        context.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/])"), lambda route: route.abort())
        context.add_init_script(HELPERS_JS)
        page = context.new_page()
        page.goto(f"{lab.url}lab/tree/{path}?token={lab.token}")
        yield LabNotebook(page, path)
    finally:
        context.close()


@contextmanager
def checked_notebook(browser: Browser, source: Path, workdir: Path,
                     screenshot: Path) -> Iterator[LabNotebook]:
    """Run ``source`` in JupyterLab and check what it declares: no errors after Run All, every widget step
    changes its output, every circuitsvis view renders. Saves a screenshot (also on failure)."""
    with jupyter_lab(workdir) as lab:
        checks = prepare_notebook(source, lab.root)
        with open_notebook(browser, lab, source.name) as nb:
            try:
                nb.run_all()
                for step in checks.get("widgets", []):
                    nb.operate(step["description"], step["action"])
                nb.check_circuitsvis(checks.get("circuitsvis", 0))
                yield nb
            finally:
                with suppress(PlaywrightError):
                    nb.screenshot(screenshot)
