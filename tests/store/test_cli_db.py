"""`relayer db stats | get-order | export | compact` as an operator runs them (real subprocesses)."""

from __future__ import annotations

import json
from pathlib import Path

from relayer.store import BatchRecord, Store
from relayer.types import OrderState

from ..test_cli import run
from .helpers import cursor, h32, order_record, vote


def _fill(path: Path) -> None:
    with Store.open(path) as s:
        p = s.processor()
        p.accept_order(order_record(1))
        p.accept_order(order_record(2, OrderState.FINAL, filled=((OrderState.FINAL, 12),), updated_block=5))
        b = p.batch()
        b.put_batch(BatchRecord(1, h32("b1"), OrderState.FINAL, 5))
        b.put_batch(BatchRecord(2, h32("b2"), OrderState.FINAL, 6))
        b.put_cursor(cursor(500))
        p.commit(b, sync=True)
        s.quorum().record_vote(vote(1, 0))


def test_stats_get_order_export(tmp_path: Path, cli_env: dict[str, str]) -> None:
    data = tmp_path / "data"
    _fill(data)
    out = run(["db", "stats", "--data-dir", str(data)], cli_env)
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout)
    assert stats["records"]["order"] == 2 and stats["records"]["vote"] == 1
    assert stats["cursor"]["number"] == 500 and stats["schema_version"] == 2

    h = "0x" + order_record(2).signed.hash.hex()
    out = run(["db", "get-order", h, "--data-dir", str(data)], cli_env)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["hash"] == h and got["state"] == "final" and got["filled"] == {"final": 12}
    assert got["order"]["salt"] == 2

    missing = run(["db", "get-order", "0x" + "00" * 32, "--data-dir", str(data)], cli_env)
    assert missing.returncode == 1 and "no order" in missing.stderr
    bad = run(["db", "get-order", "0x12", "--data-dir", str(data)], cli_env)
    assert bad.returncode == 2 and "64 hex digits" in bad.stderr

    out = run(["db", "export", "--data-dir", str(data)], cli_env)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert rows[0]["space"] == "meta" and rows[0]["value"]["schema_version"] == 2
    spaces = [r["space"] for r in rows]
    assert spaces.count("order") == 2 and spaces.count("input") == 2 and "vote" in spaces
    vote_row = next(r for r in rows if r["space"] == "vote")
    assert (vote_row["seq"], vote_row["round"]) == (1, 0)
    assert {r["value"]["state"] for r in rows if r["space"] == "order"} == {"accepted", "final"}


def test_compact_prunes_by_the_configured_horizon(tmp_path: Path, cli_env: dict[str, str]) -> None:
    data = tmp_path / "data"
    _fill(data)
    out = run(["db", "compact", "--data-dir", str(data), "--horizon-blocks", "100"], cli_env)
    assert out.returncode == 0, out.stderr
    assert "pruned below block 400" in out.stdout and "orders 1" in out.stdout and "batches 1" in out.stdout
    with Store.open(data) as s:
        assert s.get_order(order_record(2).signed.hash) is None
        assert s.get_order(order_record(1).signed.hash) is not None
        assert [b.seq for b in s.iter_batches()] == [2]


def test_config_locked_missing_and_foreign(tmp_path: Path, cli_env: dict[str, str]) -> None:
    cfg = tmp_path / "config.json"
    from ..conftest import VALID

    cfg.write_text(json.dumps({**VALID, "node": {"name": "n", "data_dir": "store"}}))
    out = run(["db", "stats", "--config", str(cfg)], cli_env)
    assert out.returncode == 1 and "no store in" in out.stderr and str(tmp_path / "store") in out.stderr
    _fill(tmp_path / "store")
    with Store.open(tmp_path / "store"):
        out = run(["db", "stats", "--config", str(cfg)], cli_env)
        assert out.returncode == 1 and "in use by another process" in out.stderr
    out = run(["db", "stats", "--config", str(cfg)], cli_env)
    assert out.returncode == 0 and json.loads(out.stdout)["records"]["order"] == 2
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hi")
    out = run(["db", "export", "--data-dir", str(tmp_path / "junk")], cli_env)
    assert out.returncode == 1 and "holds no LevelDB store" in out.stderr
    both = run(["db", "stats", "--data-dir", str(tmp_path), "--config", str(cfg)], cli_env)
    assert both.returncode == 2
