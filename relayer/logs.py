"""Logging: readable lines by default, JSON lines for machines, per-module levels.

Loggers are stdlib loggers named ``relayer.<module>`` with lazy %-style arguments. Structured context goes in
``extra=`` (for example ``extra={"order": h, "peer": p}``); the text format appends it as ``key=value`` and the JSON
format as fields. Never log key material.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is context.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def _context(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _timestamp(record: logging.LogRecord) -> str:
    ms = int(record.msecs)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{ms:03d}Z"


class TextFormatter(logging.Formatter):
    """``2026-11-23T12:00:00.123Z INFO  relayer.p2p  connected peer=16Uiu2...``"""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname:<7} {record.name}  {record.getMessage()}"
        ctx = _context(record)
        if ctx:
            line += " " + " ".join(f"{k}={v}" for k, v in ctx.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then the record's context fields."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in _context(record).items():
            obj.setdefault(k, v)
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str, separators=(",", ":"))


def parse_level_overrides(specs: Iterable[str]) -> dict[str, str]:
    """Parse ``relayer.p2p=debug`` items (also comma-separated) into {logger: level}; ValueError names a bad one."""
    out: dict[str, str] = {}
    for spec in specs:
        for item in filter(None, (s.strip() for s in spec.split(","))):
            name, sep, level = item.partition("=")
            if not sep or not name or level.lower() not in LEVELS:
                raise ValueError(
                    f"bad log level override {item!r}: expected LOGGER=LEVEL with LEVEL one of {', '.join(LEVELS)}"
                )
            out[name] = level.lower()
    return out


def setup_logging(
    level: str = "info",
    fmt: str = "text",
    overrides: Mapping[str, str] | None = None,
    stream: TextIO | None = None,
) -> None:
    """Configure the root logger once for the process (replaces handlers a previous call installed)."""
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}")
    if fmt not in ("text", "json"):
        raise ValueError(f"unknown log format {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    # Chatty third-party loggers stay at warning unless asked for.
    for noisy in ("libp2p", "web3", "urllib3", "hpack", "multiaddr", "asyncio"):
        logging.getLogger(noisy).setLevel(max(LEVELS[level], logging.WARNING))
    for name, lvl in (overrides or {}).items():
        logging.getLogger(name).setLevel(LEVELS[lvl])
