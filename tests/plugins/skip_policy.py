"""Fail the run when a test is skipped (or xfailed) without an entry in the skip allow-list.

A test against a real part (anvil, LevelDB, libp2p, buildah) that skips because the part is missing would hide a
broken install. Every acceptable skip is listed in tests/skip_allowlist.txt, one per line:

    NODEID_GLOB [| REASON_PREFIX]  # why this skip is acceptable (required)

The comment is required; a line without one makes the run fail too.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class _Entry:
    glob: str
    reason_prefix: str | None


class _Policy:
    """Registered as a plugin by pytest_configure: records skips and fails the session on unlisted ones."""

    def __init__(self, entries: list[_Entry], problems: list[str]) -> None:
        self.entries = entries
        self.problems = problems
        self.unlisted: list[tuple[str, str]] = []

    def allows(self, nodeid: str, reason: str) -> bool:
        return any(
            fnmatch.fnmatchcase(nodeid, e.glob) and (e.reason_prefix is None or reason.startswith(e.reason_prefix))
            for e in self.entries
        )

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped:
            reason = _skip_reason(report)
            if not self.allows(report.nodeid, reason):
                self.unlisted.append((report.nodeid, reason))

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.unlisted and not self.problems:
            return
        tr = terminalreporter
        tr.section("skip policy", red=True, bold=True)
        for problem in self.problems:
            tr.line(problem, red=True)
        for nodeid, reason in self.unlisted:
            tr.line(f"not on the skip allow-list: {nodeid} ({reason})", red=True)
        tr.line(
            "A skipped test against a real part hides a broken install: fix the install, or list the skip "
            "with a comment in the allow-list.",
            red=True,
        )

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if (self.unlisted or self.problems) and exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _load(path: Path) -> _Policy:
    entries: list[_Entry] = []
    problems: list[str] = []
    if not path.exists():
        return _Policy(entries, [f"skip allow-list {path} does not exist"])
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        body, sep, comment = line.partition("#")
        if not body.strip():
            continue
        if not sep or not comment.strip():
            problems.append(f"{path}:{n}: entry without a comment saying why the skip is acceptable")
            continue
        glob, bar, reason = body.partition("|")
        entries.append(_Entry(glob.strip(), reason.strip() if bar else None))
    return _Policy(entries, problems)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "skip_allowlist",
        "file listing the skips that may happen (see tests/plugins/skip_policy.py)",
        default="tests/skip_allowlist.txt",
    )


def pytest_configure(config: pytest.Config) -> None:
    path = config.rootpath / str(config.getini("skip_allowlist"))
    config.pluginmanager.register(_load(path), "skip-policy")


def _skip_reason(report: pytest.TestReport) -> str:
    if hasattr(report, "wasxfail"):
        return f"xfail: {report.wasxfail}"
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)
