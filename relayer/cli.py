"""The `relayer` command line (click).

Exit codes: 0 success; 1 a clear error (bad config, missing or undecryptable key, ...); 2 bad usage; 3 a command
whose implementation has not landed yet (it says which issue brings it).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from relayer import __version__
from relayer.errors import ConfigError, RelayerError

if TYPE_CHECKING:
    from relayer.config import Config

log = logging.getLogger("relayer.cli")

EXIT_ERROR = 1
EXIT_NOT_YET = 3


class NotYetAvailable(click.ClickException):
    exit_code = EXIT_NOT_YET


def _not_yet(what: str, issue: str) -> NoReturn:
    raise NotYetAvailable(f"{what} is not available yet: it arrives with {issue}. See `relayer --help`.")


class _Group(click.Group):
    """Maps the project's errors to a one-line message and exit code 1 (no traceback for expected failures)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RelayerError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(EXIT_ERROR)


def _setup_logs(ctx: click.Context, cfg: Config | None = None) -> None:
    """Logging from the CLI options, falling back to the config's node.log_* settings."""
    from relayer.logs import setup_logging

    opts = ctx.find_root().params
    overrides: dict[str, str] = {str(k): v for k, v in cfg.node.log_levels.items()} if cfg else {}
    overrides.update(opts.get("log_overrides") or {})
    setup_logging(
        level=opts.get("log_level") or (cfg.node.log_level if cfg else "info"),
        fmt=opts.get("log_format") or (cfg.node.log_format if cfg else "text"),
        overrides=overrides,
    )


def _parse_overrides(_ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]) -> dict[str, str]:
    from relayer.logs import parse_level_overrides

    try:
        return parse_level_overrides(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default=None,
    help="Default log level (overrides node.log_level in the config).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="'text' for people (default), 'json' for one JSON object per line.",
)
@click.option(
    "--log",
    "log_overrides",
    multiple=True,
    callback=_parse_overrides,
    metavar="LOGGER=LEVEL",
    help="Per-module level, e.g. --log relayer.p2p=debug (repeatable, or comma-separated).",
)
@click.version_option(__version__, "--version", prog_name="relayer")
@click.pass_context
def cli(ctx: click.Context, log_level: str | None, log_format: str | None, log_overrides: dict[str, str]) -> None:
    """Relayer node of a decentralised perpetual-futures exchange.

    Takes EIP-712 signed orders from traders and peers, matches them deterministically, has a quorum of relayers
    approve each batch over libp2p, settles approved batches on the exchange contract and reconciles from its events.

    \b
    Start here:
      relayer init --dir node1          new config + encrypted key, prints address and peer id
      relayer config check node1/config.json
      relayer run --config node1/config.json

    Keys never live in the config: RELAYER_KEYSTORE_PASSWORD unlocks the keystore (or you are prompted);
    RELAYER_PRIVATE_KEY (hex) bypasses the keystore for development. Any config key can be overridden from the
    environment as RELAYER__SECTION__KEY (see `relayer config docs`).
    """
    ctx.ensure_object(dict)


@cli.command()
def version() -> None:
    """Print the relayer version and the versions of the parts it is built on."""
    from importlib import metadata

    click.echo(f"relayer {__version__}")
    click.echo(f"python {sys.version.split()[0]}")
    for dist in ("libp2p", "web3", "eth-account", "coincurve", "trio", "plyvel"):
        try:
            click.echo(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            click.echo(f"{dist} (missing)")


# ----------------------------------------------------------------------------------------------------------- init


def _parse_market(_ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]) -> list[dict[str, Any]]:
    out = []
    for item in value:
        mid, sep, symbol = item.partition(":")
        if not sep or not mid.isdigit():
            raise click.BadParameter(f"{item!r}: expected ID:SYMBOL, e.g. 1:ETH-USD")
        out.append({"id": int(mid), "symbol": symbol})
    return out


@cli.command()
@click.option(
    "--dir",
    "directory",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to create the node in (config.json, keystore.json, data/).",
)
@click.option("--name", default=None, help="Node name (default: the directory's name).")
@click.option("--chain-id", type=int, default=31337, show_default=True, help="EIP-155 chain id.")
@click.option(
    "--rpc-http",
    multiple=True,
    default=("http://127.0.0.1:8545",),
    show_default=True,
    help="JSON-RPC HTTP URL (repeatable).",
)
@click.option(
    "--rpc-ws",
    multiple=True,
    default=("ws://127.0.0.1:8545",),
    show_default=True,
    help="JSON-RPC WebSocket URL (repeatable).",
)
@click.option("--exchange", default=None, help="Exchange contract address (can be set later).")
@click.option("--p2p-port", type=int, default=9000, show_default=True, help="libp2p TCP port.")
@click.option("--api-port", type=int, default=8080, show_default=True, help="Trader API port.")
@click.option(
    "--market",
    "markets",
    multiple=True,
    callback=_parse_market,
    metavar="ID:SYMBOL",
    help="Market served (repeatable; default 1:ETH-USD).",
)
@click.option(
    "--scrypt-n",
    type=int,
    default=None,
    hidden=True,
    help="Keystore scrypt work factor (tests use a small one; default is eth-account's).",
)
@click.pass_context
def init(
    ctx: click.Context,
    directory: Path,
    name: str | None,
    chain_id: int,
    rpc_http: tuple[str, ...],
    rpc_ws: tuple[str, ...],
    exchange: str | None,
    p2p_port: int,
    api_port: int,
    markets: list[dict[str, Any]],
    scrypt_n: int | None,
) -> None:
    """Create a node directory: a config and a new encrypted relayer key.

    Prints the relayer's Ethereum address (to add to the exchange's relayer registry) and its libp2p peer id (for
    the other nodes' p2p.bootstrap); both come from the same secp256k1 key. The keystore password is read from
    RELAYER_KEYSTORE_PASSWORD, or prompted for.
    """
    from relayer import keys as k
    from relayer.config import load_config, parse_config

    _setup_logs(ctx)
    cfg_path, ks_path = directory / "config.json", directory / "keystore.json"
    for existing in (cfg_path, ks_path):
        if existing.exists():
            raise click.ClickException(f"{existing} already exists; refusing to overwrite it")
    password = os.environ.get("RELAYER_KEYSTORE_PASSWORD")
    if not password:
        if not sys.stdin.isatty():
            raise click.ClickException("set RELAYER_KEYSTORE_PASSWORD, or run on a terminal to be prompted")
        password = click.prompt("New keystore password", hide_input=True, confirmation_prompt=True)
    raw = {
        "//": "perp-relayer node config; reference: `relayer config docs` or docs/config.md",
        "node": {"name": name or directory.resolve().name or "relayer", "data_dir": "data"},
        "keys": {"keystore": "keystore.json", "password_env": "RELAYER_KEYSTORE_PASSWORD"},
        "chain": {
            "chain_id": chain_id,
            "rpc_http": list(rpc_http),
            "rpc_ws": list(rpc_ws),
            "exchange": exchange,
        },
        "p2p": {"listen": [f"/ip4/0.0.0.0/tcp/{p2p_port}"], "bootstrap": []},
        "api": {"host": "127.0.0.1", "port": api_port},
        "markets": markets or [{"id": 1, "symbol": "ETH-USD"}],
    }
    parse_config(raw, base_dir=directory, source=str(cfg_path), env={})  # validate before writing anything
    directory.mkdir(parents=True, exist_ok=True)
    key = k.RelayerKey.generate()
    k.write_keystore(ks_path, key, password, **({"scrypt_n": scrypt_n} if scrypt_n else {}))
    cfg_path.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    load_config(cfg_path, env={})
    click.echo(f"created {cfg_path} and {ks_path}")
    click.echo(f"relayer address: {key.address}")
    click.echo(f"peer id:         {key.peer_id}")
    click.echo(f"bootstrap addr:  /ip4/127.0.0.1/tcp/{p2p_port}/p2p/{key.peer_id}")


# ----------------------------------------------------------------------------------------------------------- keys


@cli.group()
def keys() -> None:
    """Inspect and create relayer keys (keystores)."""


def _keystore_from(config: Path | None, keystore: Path | None) -> tuple[Path, str]:
    if keystore is not None:
        return keystore, "RELAYER_KEYSTORE_PASSWORD"
    from relayer.config import load_config

    cfg = load_config(config or Path("config.json"))
    return cfg.keys.keystore, cfg.keys.password_env


@keys.command("show")
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Config whose keys.keystore to read (default ./config.json).",
)
@click.option(
    "--keystore",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Read this keystore instead of the config's.",
)
@click.option("--address-only", is_flag=True, help="Print the address recorded in the keystore without decrypting.")
@click.pass_context
def keys_show(ctx: click.Context, config: Path | None, keystore: Path | None, address_only: bool) -> None:
    """Print the relayer's address, libp2p peer id and public key.

    Decrypts the keystore (password from the config's keys.password_env variable, or a prompt) to derive the peer
    id; RELAYER_PRIVATE_KEY, if set, is shown instead. Never prints the private key.
    """
    from relayer import keys as k

    _setup_logs(ctx)
    path, password_env = _keystore_from(config, keystore)
    if address_only:
        click.echo(f"address: {k.keystore_address(path)}")
        return
    key = k.load_relayer_key(path, password_env, os.environ, interactive=sys.stdin.isatty())
    click.echo(f"address:    {key.address}")
    click.echo(f"peer id:    {key.peer_id}")
    click.echo(f"public key: 0x{key.public_key.hex()}")


@keys.command("new")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Keystore file to create (never overwritten).",
)
@click.option("--scrypt-n", type=int, default=None, hidden=True)
def keys_new(out: Path, scrypt_n: int | None) -> None:
    """Create a new encrypted keystore, e.g. a separate gas-paying key (keys.gas_keystore).

    The password comes from RELAYER_KEYSTORE_PASSWORD or a prompt.
    """
    from relayer import keys as k

    password = os.environ.get("RELAYER_KEYSTORE_PASSWORD")
    if not password:
        if not sys.stdin.isatty():
            raise click.ClickException("set RELAYER_KEYSTORE_PASSWORD, or run on a terminal to be prompted")
        password = click.prompt("New keystore password", hide_input=True, confirmation_prompt=True)
    key = k.RelayerKey.generate()
    k.write_keystore(out, key, password, **({"scrypt_n": scrypt_n} if scrypt_n else {}))
    click.echo(f"created {out}")
    click.echo(f"address: {key.address}")
    click.echo(f"peer id: {key.peer_id}")


# --------------------------------------------------------------------------------------------------------- config


@cli.group()
def config() -> None:
    """Check, show and document node configuration."""


@config.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def config_check(file: Path) -> None:
    """Validate FILE (with RELAYER__* environment overrides applied) and summarise it.

    Reports every problem with the key's path and exits 1 if there is any. Also checks that the keystore exists
    and records an address (without decrypting it).
    """
    from relayer import keys as k
    from relayer.config import load_config

    cfg = load_config(file)
    problems = []
    address = None
    if not os.environ.get(k.DEV_KEY_ENV):
        try:
            address = k.keystore_address(cfg.keys.keystore)
        except RelayerError as exc:
            problems.append(f"keys.keystore: {exc}")
    if cfg.keys.gas_keystore is not None:
        try:
            k.keystore_address(cfg.keys.gas_keystore)
        except RelayerError as exc:
            problems.append(f"keys.gas_keystore: {exc}")
    if cfg.orders.deny_list_file is not None and not cfg.orders.deny_list_file.is_file():
        problems.append(f"orders.deny_list_file: {cfg.orders.deny_list_file} does not exist")
    if problems:
        raise ConfigError(str(file), problems)
    click.echo(f"{file}: ok")
    click.echo(f"  node        {cfg.node.name} (data in {cfg.node.data_dir})")
    click.echo(f"  relayer     {address or ('$' + k.DEV_KEY_ENV + ' (development key)')}")
    click.echo(f"  chain       id {cfg.chain.chain_id} via {', '.join(cfg.chain.rpc_http)}")
    click.echo(f"  exchange    {cfg.chain.exchange or 'not set yet (required by `relayer run`)'}")
    click.echo(f"  p2p         listen {', '.join(cfg.p2p.listen)}; {len(cfg.p2p.bootstrap)} bootstrap peer(s)")
    click.echo(f"  api         http://{cfg.api.host}:{cfg.api.port}")
    click.echo(f"  markets     {', '.join(f'{m.id}:{m.symbol}' for m in cfg.markets)}")


@config.command("show")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def config_show(file: Path) -> None:
    """Print the effective configuration of FILE as JSON: defaults filled in, overrides applied, paths resolved."""
    from relayer.config import load_config, to_json

    click.echo(json.dumps(to_json(load_config(file)), indent=2))


@config.command("docs")
def config_docs() -> None:
    """Print the configuration reference (every key, its type, default, range and meaning) as Markdown."""
    from relayer.config import render_docs

    click.echo(render_docs(), nl=False)


@config.command("example")
def config_example() -> None:
    """Print a complete example config (every key, with a // comment explaining it), as in config.example.json."""
    from relayer.config import render_example

    click.echo(render_example(), nl=False)


# ------------------------------------------------------------------------------------ commands later issues bring


@cli.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("config.json"),
    show_default=True,
    help="Node config file.",
)
@click.pass_context
def run(ctx: click.Context, config_file: Path) -> None:
    """Run a relayer node until SIGTERM or SIGINT (Ctrl-C), then stop cleanly and exit 0.

    \b
    At start the node:
      - checks the config, unlocks the relayer key (and keys.gas_keystore if set),
      - refuses to start if the RPC's chain id is not chain.chain_id or chain.exchange holds no exchange,
      - opens and recovers its store in node.data_dir (one node per directory: a second one is refused),
      - resumes reading the exchange's events from its stored cursor (or chain.start_block), backfilling any gap.
    A component that fails stops the node with exit code 1 and says why; it never runs half alive.
    Running, it reconciles chain state, joins the relayer network on p2p.listen / p2p.bootstrap (gossiped orders and
    cancels, anti-entropy sync, the quorum that certifies batches) and settles certified batches through its worker.
    The trader API and admission rules arrive with issue #8.
    """
    import trio

    from relayer.config import load_config
    from relayer.keys import load_relayer_key
    from relayer.node import Node

    cfg = load_config(config_file)
    _setup_logs(ctx, cfg)
    env = dict(os.environ)
    interactive = sys.stdin.isatty()
    key = load_relayer_key(cfg.keys.keystore, cfg.keys.password_env, env, interactive=interactive)
    gas_key = None
    if cfg.keys.gas_keystore is not None:
        from relayer.keys import decrypt_keystore, password_from

        password = password_from(
            cfg.keys.gas_password_env, env, interactive=interactive, what=f"gas keystore {cfg.keys.gas_keystore}"
        )
        gas_key = decrypt_keystore(cfg.keys.gas_keystore, password)
    node = Node(cfg, key, gas_key)

    async def main() -> None:
        import signal

        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                await nursery.start(node.run)
                async for signum in signals:
                    log.info("%s received: stopping", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break

    log.info("starting relayer %s (peer id %s) with %s", key.address, key.peer_id, config_file)
    try:
        trio.run(main)
    except BaseExceptionGroup as group:  # trio wraps a component's failure in exception groups
        expected = _first_leaf(group, RelayerError)
        if expected is not None:
            raise expected from None  # a clear one-line error, exit 1
        log.critical("the node crashed", exc_info=group)
        ctx.exit(EXIT_ERROR)
    log.info("stopped")


def _first_leaf(group: BaseExceptionGroup[BaseException], kind: type[BaseException]) -> BaseException | None:
    """The first exception of type ``kind`` inside (nested) exception groups."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found = _first_leaf(exc, kind)
            if found is not None:
                return found
        elif isinstance(exc, kind):
            return exc
    return None


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def devnet() -> None:
    """Run a local chain, deploy the contracts and run a multi-node relayer network with live order flow."""
    _not_yet("`relayer devnet`", "the node issue (#8)")


@cli.group(invoke_without_command=True)
def order() -> None:
    """Sign, submit, cancel and look up orders through a node's API (arrives with the node issue, #8)."""
    _not_yet("`relayer order`", "the node issue (#8)")


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def book() -> None:
    """Show a market's order book from a node (arrives with the node issue, #8)."""
    _not_yet("`relayer book`", "the node issue (#8)")


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def status() -> None:
    """Show a node's status: peers, seq, round, chain head and lag (arrives with the node issue, #8)."""
    _not_yet("`relayer status`", "the node issue (#8)")


# ------------------------------------------------------------------------------------------------------------- db


def _data_dir(config_file: Path | None, data_dir: Path | None) -> tuple[Path, int]:
    """The store directory and pruning horizon from --data-dir, or else from the config (default ./config.json)."""
    from relayer.config import StoreSection, load_config

    if data_dir is not None:
        if config_file is not None:
            raise click.UsageError("give --config or --data-dir, not both")
        return data_dir, StoreSection().prune_horizon_blocks
    cfg = load_config(config_file or Path("config.json"))
    return cfg.node.data_dir, cfg.store.prune_horizon_blocks


_config_opt = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Node config whose node.data_dir to open (default ./config.json).",
)
_data_dir_opt = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Open this data directory instead of the config's.",
)


@cli.group()
def db() -> None:
    """Inspect and maintain a node's LevelDB store (docs/store.md).

    The store is locked while a node runs: these commands open it themselves, so run them on a stopped node (a
    running one makes them fail with a clear error, never corrupts it).
    """


@db.command("stats")
@_config_opt
@_data_dir_opt
def db_stats(config_file: Path | None, data_dir: Path | None) -> None:
    """Print record counts and sizes per keyspace, the schema version, chain cursor and input log position (JSON)."""
    from relayer.store import Store

    path, _ = _data_dir(config_file, data_dir)
    with Store.open(path, create=False) as store:
        click.echo(json.dumps(store.stats(), indent=2))


@db.command("get-order")
@click.argument("order_hash", metavar="HASH")
@_config_opt
@_data_dir_opt
def db_get_order(order_hash: str, config_file: Path | None, data_dir: Path | None) -> None:
    """Print the stored order with hash HASH (0x + 64 hex digits) as JSON; exit 1 if it is not stored."""
    from relayer.store import Store
    from relayer.store.inspect import order_json

    text = order_hash.removeprefix("0x")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise click.BadParameter("expected 0x followed by 64 hex digits", param_hint="HASH")
    path, _ = _data_dir(config_file, data_dir)
    with Store.open(path, create=False) as store:
        rec = store.get_order(raw)
    if rec is None:
        click.echo(f"error: no order 0x{raw.hex()} in {path}", err=True)
        raise SystemExit(EXIT_ERROR)
    click.echo(json.dumps(order_json(rec), indent=2))


@db.command("export")
@_config_opt
@_data_dir_opt
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to this file instead of standard output.",
)
def db_export(config_file: Path | None, data_dir: Path | None, out: Path | None) -> None:
    """Export every record as JSON lines: keyspace, key (hex and decoded) and decoded value."""
    from relayer.store import Store
    from relayer.store.inspect import export

    path, _ = _data_dir(config_file, data_dir)
    with Store.open(path, create=False) as store:
        lines = (json.dumps(row, sort_keys=True) + "\n" for row in export(store))
        if out is None:
            for line in lines:
                click.echo(line, nl=False)
        else:
            with out.open("w", encoding="utf-8") as fh:
                fh.writelines(lines)


@db.command("compact")
@_config_opt
@_data_dir_opt
@click.option(
    "--horizon-blocks",
    type=click.IntRange(min=0),
    default=None,
    help="Override store.prune_horizon_blocks of the config.",
)
def db_compact(config_file: Path | None, data_dir: Path | None, horizon_blocks: int | None) -> None:
    """Prune final data older than the horizon (counted back from the chain cursor), then compact LevelDB."""
    from relayer.store import Store

    path, horizon = _data_dir(config_file, data_dir)
    with Store.open(path, create=False) as store:
        cursor = store.get_cursor()
        if cursor is None:
            store.compact()
            click.echo("no chain cursor yet: nothing is final, nothing pruned; compacted")
            return
        result = store.prune(cursor.number, horizon if horizon_blocks is None else horizon_blocks)
    click.echo(
        f"pruned below block {cursor.number - (horizon if horizon_blocks is None else horizon_blocks)}: "
        + ", ".join(f"{name} {getattr(result, name)}" for name in result.__dataclass_fields__)
        + "; compacted"
    )


def main() -> None:
    cli.main(prog_name="relayer")


if __name__ == "__main__":  # pragma: no cover
    main()
