from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from relayer import logs


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    p2p_level = logging.getLogger("relayer.p2p").level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("relayer.p2p").setLevel(p2p_level)


def test_text_format_is_readable_with_context(restore_logging: None) -> None:
    out = io.StringIO()
    logs.setup_logging("info", "text", stream=out)
    logging.getLogger("relayer.p2p").info("connected to %s", "peer-b", extra={"peer": "16Uiu2X"})
    line = out.getvalue().strip()
    assert line.endswith("INFO    relayer.p2p  connected to peer-b peer=16Uiu2X")
    assert line[:4].isdigit() and "Z " in line


def test_json_format_and_per_module_levels(restore_logging: None) -> None:
    out = io.StringIO()
    logs.setup_logging("warning", "json", overrides={"relayer.p2p": "debug"}, stream=out)
    logging.getLogger("relayer.p2p").debug("gossip %d", 3, extra={"topic": "orders"})
    logging.getLogger("relayer.store").info("hidden at warning")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    obj = json.loads(lines[0])
    assert obj["level"] == "debug"
    assert obj["logger"] == "relayer.p2p"
    assert obj["msg"] == "gossip 3"
    assert obj["topic"] == "orders"


def test_parse_level_overrides() -> None:
    assert logs.parse_level_overrides(["relayer.p2p=debug,relayer.store=WARNING", "x=info"]) == {
        "relayer.p2p": "debug",
        "relayer.store": "warning",
        "x": "info",
    }
    for bad in ("relayer.p2p", "=debug", "relayer.p2p=loud"):
        with pytest.raises(ValueError, match="bad log level override"):
            logs.parse_level_overrides([bad])
