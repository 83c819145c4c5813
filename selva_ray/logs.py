"""Driver log hygiene for Ray jobs: drop the messages we expect, no colour codes in files.

- Ray warns "Token authentication is enabled" whenever it starts a local cluster with
  RAY_AUTH_MODE unset: that is our own local cluster, so the line is noise (a logging filter).
- Ray Data's actor pools always pass their context by object reference, so the driver's core
  worker (C++) prints "has constructor arguments in the object store and max_restarts > 0" for
  every encoder actor (ray-project/ray#53727); Ray Data restarts the actors itself. That line is
  written straight to file descriptor 2, so a small relay on fd 2 drops it.
- When stderr is not a terminal, Ray's coloured `(pid=...)` prefixes (RAY_COLOR_PREFIX=0) and
  any other ANSI codes are stripped by the same relay.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading

EXPECTED = (
    re.compile(rb"has constructor arguments in the object store and max_restarts > 0"),
    re.compile(rb"Token authentication is enabled for this Ray cluster"),
)
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")
_installed = False


class _DropExpected(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage().encode(errors="replace")
        return not any(p.search(text) for p in EXPECTED)


def quiet_ray_logs(*, local_cluster: bool) -> None:
    """Call once in a driver before `ray.init`. Idempotent."""
    global _installed
    if not sys.stderr.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    if local_cluster:
        for name in ("ray", "ray._private.authentication.authentication_token_setup"):
            logging.getLogger(name).addFilter(_DropExpected())
    if _installed or os.environ.get("SELVA_RAW_STDERR"):
        return
    _installed = True
    _relay_stderr(strip_ansi=not sys.stderr.isatty())


def _relay_stderr(*, strip_ansi: bool) -> None:
    """Route fd 2 through a pipe; a thread copies lines to the real stderr minus the
    expected noise. Flushed and joined at exit so no line is lost."""
    try:
        sys.stderr.flush()
        real = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
    except OSError:
        return

    def pump() -> None:
        with os.fdopen(read_end, "rb", buffering=0) as src:
            pending = b""
            while chunk := src.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    _emit(line + b"\n")
            if pending:
                _emit(pending)

    def _emit(line: bytes) -> None:
        if any(p.search(line) for p in EXPECTED):
            return
        if strip_ansi:
            line = ANSI.sub(b"", line)
        os.write(real, line)

    thread = threading.Thread(target=pump, name="selva-stderr", daemon=True)
    thread.start()

    def restore() -> None:
        try:
            sys.stderr.flush()
            os.dup2(real, 2)  # closes the pipe's last write end: the pump sees EOF
        except OSError:
            return
        thread.join(timeout=1)  # local Ray daemons may still hold the pipe

    atexit.register(restore)
