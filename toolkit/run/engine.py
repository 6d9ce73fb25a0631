"""How the runner executes one notebook: papermill's nbclient engine, reporting each cell as it starts and ends,
on a kernel whose sockets are not plain TCP.

- :class:`CellProgress`: one status line per notebook — code cells done of code cells, the cell running (its index
  in the executed copy, the index a failure names, and its first line of code) and the time so far. On a terminal
  the line is rewritten in place (and its clock ticks); otherwise one line is printed as each code cell starts.
- :func:`execute_notebook`: :func:`papermill.execute_notebook` through the ``"toolkit"`` engine, which forwards
  papermill's ``cell_start``/``cell_complete`` hooks to a :class:`CellProgress`. papermill runs in a worker thread, so
  nbclient installs no signal handler of its own (it does only in the main thread, where it would turn Ctrl-C into a
  kernel shutdown racing the cell) and Ctrl-C reaches the main thread as a ``KeyboardInterrupt`` wherever it lands.
  The main thread then kills the kernel (:func:`stop_kernels`; kernels are started by a
  :class:`TrackedKernelManager` for this), lets papermill save the partly executed notebook, and re-raises.
- :func:`kernel_config`: ipykernel warns "Kernel is running over TCP without encryption" whenever its sockets are
  unencrypted TCP. Kernel specs that declare CurveZMQ support (ipykernel >= 7 writes ``supported_encryption:
  ["curve"]``, as the runner's own ``reasoning-circuits`` spec has) get manager-provisioned Curve keys; other kernels
  talk over local IPC sockets instead of TCP. Either way there is no plain-text TCP, so nothing is silenced: the
  warning's cause is gone.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
import weakref
from typing import TextIO

from jupyter_client import AsyncKernelManager
from papermill.engines import NBClientEngine, papermill_engines
from traitlets.config import Config

ENGINE = "toolkit"
BAR_WIDTH = 12


class CellProgress:
    """Progress of one notebook's execution, written to ``stream`` (default ``sys.stdout``)."""

    def __init__(self, label: str, stream: TextIO | None = None, tty: bool | None = None, tick_s: float = 1.0):
        self.label, self.stream = label, stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.tick_s = tick_s
        self.total = self.done = 0
        self.running: tuple[int, str] | None = None  # (cell index, first line of code)
        self.t0 = time.perf_counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    # papermill's hooks ------------------------------------------------------------------------------------------
    def begin(self, nb) -> None:
        """Count the code cells of the notebook about to run (parameters papermill injected included)."""
        self.total = sum(cell.cell_type == "code" for cell in nb.cells)
        self.t0 = time.perf_counter()
        self._render()
        if self.tty and self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()

    def cell_start(self, cell, index: int) -> None:
        if cell.cell_type == "code":
            self.running = (index, first_code_line(cell.source))
            self._render(new_line=not self.tty)

    def cell_complete(self, cell, index: int) -> None:
        if cell.cell_type == "code":
            self.done += 1
            self.running = None
            self._render()

    # the line --------------------------------------------------------------------------------------------------
    def status(self) -> str:
        """``[1/2] 00_name  ▕████░░░░▏ 3/8 cells  12 s  cell 5: x = f(y)`` (the bar on a terminal only)."""
        text = f"{self.label}  {self._bar()}{self.done}/{self.total} cells  {time.perf_counter() - self.t0:.0f} s"
        if self.running is not None:
            text += f"  cell {self.running[0]}: {self.running[1]}"
        return text

    def _bar(self) -> str:
        if not self.tty:
            return ""
        filled = round(BAR_WIDTH * self.done / self.total) if self.total else 0
        if (getattr(self.stream, "encoding", None) or "").lower().replace("-", "") == "utf8":
            return "▕" + "█" * filled + "░" * (BAR_WIDTH - filled) + "▏ "
        return "[" + "#" * filled + "-" * (BAR_WIDTH - filled) + "] "

    def _render(self, new_line: bool = False) -> None:
        with self._lock:
            if self.tty:
                width = shutil.get_terminal_size().columns - 1
                self.stream.write("\r" + self.status()[:width] + "\x1b[K")
            elif new_line:
                self.stream.write(self.status() + "\n")
            self.stream.flush()

    def _tick(self) -> None:
        while not self._stop.wait(self.tick_s):
            self._render()

    def close(self, outcome: str) -> None:
        """Stop the clock and end the line with ``outcome`` (e.g. ``ok (3.2 s)``)."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        self.running = None
        with self._lock:
            prefix = "\r" if self.tty else ""
            suffix = "\x1b[K" if self.tty else ""
            self.stream.write(f"{prefix}{self.label}  {self.done}/{self.total} cells  {outcome}{suffix}\n")
            self.stream.flush()


def first_code_line(source: str, width: int = 60) -> str:
    """The first line of ``source`` that is neither blank nor a comment, shortened to ``width`` characters."""
    lines = [line.strip() for line in source.splitlines()]
    line = next((ln for ln in lines if ln and not ln.startswith("#")), lines[0] if lines else "")
    return line if len(line) <= width else line[: width - 1] + "…"


class ProgressEngine(NBClientEngine):
    """papermill's nbclient engine, reporting cell starts and ends to ``cell_progress`` (a :class:`CellProgress`).

    A cell whose kernel Ctrl-C killed is not counted as done (it stays the cell running)."""

    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, cell_progress: CellProgress | None = None, **kwargs):
        start, complete = nb_man.cell_start, nb_man.cell_complete

        def cell_start(cell, cell_index=None, **kw):
            start(cell, cell_index, **kw)
            if cell_progress is not None:
                cell_progress.cell_start(cell, cell_index)

        def cell_complete(cell, cell_index=None, **kw):  # papermill calls it in a `finally`, also on errors
            complete(cell, cell_index, **kw)
            if cell_progress is not None and sys.exc_info()[1] is None and not STOPPING.is_set():
                cell_progress.cell_complete(cell, cell_index)

        nb_man.cell_start, nb_man.cell_complete = cell_start, cell_complete
        if cell_progress is not None:
            cell_progress.begin(nb_man.nb)
        return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)


papermill_engines.register(ENGINE, ProgressEngine)


class TrackedKernelManager(AsyncKernelManager):
    """nbclient's kernel manager, remembering (weakly) every manager that starts a kernel, for :func:`stop_kernels`."""

    started: weakref.WeakSet = weakref.WeakSet()

    async def start_kernel(self, **kw) -> None:
        TrackedKernelManager.started.add(self)
        await super().start_kernel(**kw)


STOPPING = threading.Event()  # set while Ctrl-C stops a run


def stop_kernels() -> None:
    """Kill the kernel processes of :class:`TrackedKernelManager` that are still running and remove their connection
    files (from any thread: only processes and files are touched, not the managers' event loops)."""
    for km in list(TrackedKernelManager.started):
        TrackedKernelManager.started.discard(km)
        process = getattr(km.provisioner, "process", None) if km.has_kernel else None  # the kernel's Popen
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(10)
        if process is not None:  # its connection and socket files too (nbclient's cleanup may be cut short)
            km.cleanup_connection_file()
            km.cleanup_ipc_files()


def kernel_config(kernel: str) -> Config:
    """Kernel-manager settings with no plain-text TCP: CurveZMQ when ``kernel``'s spec declares it, else IPC; the
    kernel started by a :class:`TrackedKernelManager`."""
    import zmq
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        declared = KernelSpecManager().get_kernel_spec(kernel).metadata.get("supported_encryption") or []
    except NoSuchKernel:
        declared = []
    declared = [declared] if isinstance(declared, str) else declared
    config = Config({"NotebookClient": {"kernel_manager_class": TrackedKernelManager}})
    if zmq.has("curve") and "curve" in {str(d).lower() for d in declared}:
        config.KernelManager.transport_encryption = "required"
    elif sys.platform != "win32":
        config.KernelManager.transport = "ipc"
    return config


def execute_notebook(nb_path: str, out_path: str, *, params: dict, kernel: str, cwd: str,
                     cell_progress: CellProgress | None = None) -> None:
    """Execute ``nb_path`` into ``out_path`` with papermill in a worker thread (raises papermill's errors unchanged);
    on Ctrl-C, kill the kernel (:func:`stop_kernels`), wait for papermill to save the notebook, and re-raise."""
    import papermill

    failure: list[BaseException] = []

    def work() -> None:
        try:
            papermill.execute_notebook(nb_path, out_path, parameters=params, kernel_name=kernel, cwd=cwd,
                                       engine_name=ENGINE, progress_bar=False, log_output=False,
                                       cell_progress=cell_progress, config=kernel_config(kernel))
        except BaseException as err:  # handed to the main thread
            failure.append(err)

    worker = threading.Thread(target=work, name="papermill", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.2)
    except KeyboardInterrupt:
        STOPPING.set()
        try:
            stop_kernels()
            worker.join(60)  # nbclient notices the dead kernel; papermill writes the partial notebook
        finally:
            STOPPING.clear()
        raise
    if failure:
        if isinstance(failure[0], KeyboardInterrupt):
            stop_kernels()
        raise failure[0]
