"""Runs anvil as a child and stops it when this process's stdin reaches EOF: the guard of one anvil.

Why a guard: a crashed test run or devnet must not leave anvil behind, and the owner may be a trio program, which
spawns children from worker threads that exit after ~10 s idle, so a parent-death signal set on anvil by the owner
would fire mid-test. Instead the owner keeps the write end of this process's stdin; when the owner exits for any
reason, SIGKILL included, the kernel closes it and the guard sees EOF. The guard itself is single-threaded and
long-lived, so it can safely give anvil a parent-death signal (SIGKILL): killing the guard kills anvil too.

Protocol on stdout: first ``anvil-guard pid=<anvil pid>``, then anvil's output up to and including its
``Listening on HOST:PORT`` line, then EOF. Later anvil output goes to ``--log`` (or is drained and dropped, so anvil
never blocks on a full pipe).

Stopping: on stdin EOF, SIGTERM, SIGINT or SIGHUP the guard sends anvil SIGTERM (anvil then writes its ``--state``
file and exits), waits up to ``--grace`` seconds and then SIGKILLs it. The guard exits with anvil's exit status
(128 + signal number when a signal other than our SIGTERM ended it).

Run by path (``python _anvil_guard.py [--grace S] [--log FILE] -- ANVIL [ARGS...]``); it imports only the standard
library, so it starts fast and works wherever the interpreter does.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import BinaryIO

PR_SET_PDEATHSIG = 1
LISTENING = b"Listening on "
PID_LINE = "anvil-guard pid="


def _die_with_guard() -> Callable[[], None] | None:
    """A preexec function giving the child SIGKILL when this (single-threaded) guard dies; None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    guard = os.getpid()

    def preexec() -> None:
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            os._exit(126)
        if os.getppid() != guard:  # the guard died between fork and prctl
            os._exit(126)

    return preexec


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _status(returncode: int, terminated_by_us: bool) -> int:
    if returncode >= 0:
        return returncode
    if terminated_by_us and -returncode == signal.SIGTERM:
        return 0
    return 128 - returncode


class _Guard:
    def __init__(self, proc: subprocess.Popen[bytes], grace: float, log: BinaryIO | None) -> None:
        self.proc = proc
        self.grace = grace
        self.log = log
        self.forwarding = True
        self.head = b""
        self.stop_deadline: float | None = None
        self.killed = False

    def stop(self) -> None:
        if self.stop_deadline is None:
            self.stop_deadline = time.monotonic() + self.grace
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def upstream(self, data: bytes) -> None:
        """Forward anvil's startup output to our stdout until its Listening line, then hand stdout back (EOF)."""
        if not self.forwarding:
            return
        self.head += data
        at = self.head.find(LISTENING)
        end = self.head.find(b"\n", at) if at >= 0 else -1
        chunk, done = (self.head, False) if end < 0 else (self.head[: end + 1], True)
        try:
            _write_all(1, chunk)
        except OSError:
            done = True  # the owner stopped reading: it is gone or gave up; stdin EOF follows
        self.head = b""
        if done:
            self.forwarding = False
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)  # closes our end of the owner's pipe: the owner reads EOF
            os.close(devnull)

    def run(self, sel: selectors.BaseSelector, wakeup: int) -> int:
        assert self.proc.stdout is not None
        out = self.proc.stdout.fileno()
        while True:
            timeout = None
            if self.stop_deadline is not None:
                timeout = max(0.0, self.stop_deadline - time.monotonic())
                if timeout == 0.0 and not self.killed:
                    self.killed = True
                    with contextlib.suppress(ProcessLookupError):
                        self.proc.kill()
                    timeout = None
            for key, _ in sel.select(timeout):
                fd = key.fd
                if fd == out:
                    data = os.read(out, 65536)
                    if not data:  # anvil closed its output: it is exiting
                        sel.unregister(out)
                        return self.finish()
                    if self.log is not None:
                        self.log.write(data)
                        self.log.flush()
                    self.upstream(data)
                elif fd == 0:
                    try:
                        data = os.read(0, 4096)
                    except OSError:
                        data = b""
                    if not data:
                        sel.unregister(0)
                        self.stop()
                elif fd == wakeup:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wakeup, 512)
                    self.stop()

    def finish(self) -> int:
        try:
            returncode = self.proc.wait(timeout=self.grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            returncode = self.proc.wait()
        return _status(returncode, self.stop_deadline is not None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--grace", type=float, default=10.0, help="seconds anvil gets to exit after SIGTERM")
    parser.add_argument("--log", help="append all of anvil's output to this file")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- ANVIL [ARGS...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("missing the anvil command after --")

    rfd, wfd = os.pipe()
    os.set_blocking(rfd, False)
    os.set_blocking(wfd, False)
    signal.set_wakeup_fd(wfd)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda _signum, _frame: None)  # the wakeup fd does the work

    try:
        # The command is the pinned anvil chosen by relayer.chain.anvil; no shell is involved.
        proc = subprocess.Popen(  # noqa: S603
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_guard(),  # safe: the guard is single-threaded
            close_fds=True,
        )
    except OSError as exc:
        sys.stderr.write(f"anvil-guard: cannot start {command[0]}: {exc}\n")
        return 127

    _write_all(1, f"{PID_LINE}{proc.pid}\n".encode())
    log = open(args.log, "ab") if args.log else None  # noqa: SIM115 - closed in finally
    guard = _Guard(proc, args.grace, log)
    sel = selectors.DefaultSelector()
    try:
        assert proc.stdout is not None
        sel.register(proc.stdout.fileno(), selectors.EVENT_READ)
        sel.register(0, selectors.EVENT_READ)
        sel.register(rfd, selectors.EVENT_READ)
        return guard.run(sel, rfd)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if log is not None:
            log.close()


if __name__ == "__main__":
    sys.exit(main())
