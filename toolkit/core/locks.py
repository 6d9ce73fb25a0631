"""Locks between processes that write the same folder (the organism build, a training run's cache entry).

:class:`FileLock` holds an exclusive ``flock`` on a lock file for the duration of a ``with`` block, so taking it is one
atomic step: two processes started together cannot both get it. The file records the holder's pid and what it is
doing, for the message the other process sees. The kernel releases a ``flock`` when its holder dies, so a lock left
by a killed process (``kill -9``, a crash, a closed laptop) is simply free: the next process takes it over and says
so. An empty or unreadable lock file is taken over the same way. Linux and macOS only (``fcntl``).
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path


class LockError(RuntimeError):
    """Another live process holds the lock."""


class FileLock:
    """``with FileLock(path, what="training into …"):`` — exclusive between processes.

    ``wait=False`` (default) raises :class:`LockError` naming the holder when the lock is taken; ``wait=True``
    prints one line and blocks until the holder finishes (the caller then usually finds its result done).
    """

    def __init__(self, path: str | Path, what: str = "", wait: bool = False):
        self.path, self.what, self.wait = Path(path), what, wait
        self._fd: int | None = None

    def _holder(self) -> str:
        try:
            text = self.path.read_text(errors="replace").strip()
        except OSError:
            return ""
        return text

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:  # an empty file that a racing process has just created is not a left-over
                existed = time.time() - self.path.stat().st_mtime > 1.0
            except FileNotFoundError:
                existed = False
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except PermissionError:
                print(f"taking over the unreadable lock file {self.path}", flush=True)
                self.path.unlink()
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder() or "another process"
                if not self.wait:
                    os.close(fd)
                    raise LockError(f"{holder} holds {self.path}; wait for it to finish or stop it, then run again "
                                    f"(a lock whose holder has died is taken over automatically)") from None
                print(f"waiting for {holder} (lock {self.path})", flush=True)
                fcntl.flock(fd, fcntl.LOCK_EX)
            # The holder may have removed the file between our open and our flock: then we locked a file nobody else
            # sees, so start again on the current one.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
            time.sleep(0.01)
        previous = os.read(fd, 4096).decode(errors="replace").strip()[:120]
        if previous:
            print(f"taking over the lock {self.path} left by {previous} (no longer running)", flush=True)
        elif existed:
            print(f"taking over the empty lock file {self.path}", flush=True)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"pid {os.getpid()}{' ' + self.what if self.what else ''}".encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
