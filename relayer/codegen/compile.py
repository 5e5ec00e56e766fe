"""Compile ``contracts/**/*.sol`` offline with the pinned solc-js into ``abis/<ContractName>.json``.

Usage::

    python -m relayer.codegen.compile [--contracts contracts] [--out abis] [--optimizer-runs 200]

The compiler is the solc-js package pinned in package.json (found by :func:`relayer.toolchain.solc_js_dir`), run by
``node`` on ``compile.js`` next to this module through the standard-JSON API: every source goes in the input, nothing
is read from disk by the compiler and nothing is downloaded.

Output is deterministic byte for byte: sources are keyed by their path relative to the parent of the contracts
directory (``contracts/TestToken.sol``) in sorted order, the metadata hash and CBOR trailer are left out of the
bytecode, and each artifact is written with a fixed key order, ``indent=2`` and a trailing newline.

Which contracts get an artifact:

- concrete contracts: always;
- interfaces with a non-empty ABI: yes, without bytecode (``"bytecode": "0x"``), so the relayer can bind contracts it
  only talks to (tokens, oracles);
- abstract contracts: no (their concrete descendants carry the ABI);
- libraries: no. Internal library code is inlined, and the events and errors a library declares appear in the ABI of
  the contracts that use them. A contract that needs a linked library (a library with external functions) is
  refused: make those functions internal.

Two artifacts may not share a name, except interfaces with the same ABI (the first by source name is kept).
``*.json`` artifacts in the output directory whose contract no longer exists are removed; nothing is written or
removed when compilation fails.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relayer.errors import RelayerError, ToolchainError
from relayer.toolchain import solc_js_dir

SOLC_VERSION = "0.8.30"
"""The compiler version pinned in package.json; a different solc-js is refused."""
EVM_VERSION = "cancun"
"""Target EVM. Bytecode for cancun also runs on later forks (anvil 1.7 defaults to the latest one)."""
DEFAULT_OPTIMIZER_RUNS = 200
DEFAULT_TIMEOUT = 600.0
COMPILE_JS = Path(__file__).with_name("compile.js")

_OUTPUT_SELECTION = ["abi", "evm.bytecode.object", "evm.bytecode.linkReferences", "evm.deployedBytecode.object"]


class CompileError(RelayerError):
    """Compilation failed; ``diagnostics`` holds every error (and warning) the compiler reported."""

    def __init__(self, summary: str, diagnostics: Sequence[Diagnostic] = ()) -> None:
        self.diagnostics = tuple(diagnostics)
        lines = [summary, *(d.render() for d in self.diagnostics if d.severity == "error")]
        super().__init__("\n".join(lines))


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One message of the compiler, located in a source as ``file:line:column`` (1-based) when it has a location."""

    severity: str
    kind: str
    message: str
    file: str | None = None
    line: int | None = None
    column: int | None = None
    snippet: str = ""

    @property
    def location(self) -> str:
        if self.file is None:
            return "solc"
        if self.line is None:
            return self.file
        return f"{self.file}:{self.line}:{self.column}"

    def render(self) -> str:
        kind = "" if self.kind.lower() == self.severity else f"{self.kind}: "
        head = f"{self.location}: {self.severity}: {kind}{self.message}"
        return f"{head}\n{self.snippet}" if self.snippet else head


@dataclass(frozen=True, slots=True)
class Artifact:
    """The compiled form of one contract, as written to ``abis/<contract_name>.json``."""

    contract_name: str
    source_name: str
    abi: list[Any]
    bytecode: str
    deployed_bytecode: str
    compiler_version: str
    settings: Mapping[str, Any]

    def to_json(self) -> str:
        doc = {
            "contractName": self.contract_name,
            "sourceName": self.source_name,
            "abi": [_sorted_keys(entry) for entry in self.abi],
            "bytecode": self.bytecode,
            "deployedBytecode": self.deployed_bytecode,
            "compiler": {"version": self.compiler_version, "settings": self.settings},
        }
        return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


@dataclass(frozen=True, slots=True)
class Compilation:
    artifacts: tuple[Artifact, ...]
    diagnostics: tuple[Diagnostic, ...]
    """Warnings and infos (a compilation with errors raises :class:`CompileError` instead)."""
    seconds: float


@dataclass(frozen=True, slots=True)
class WriteReport:
    written: tuple[Path, ...] = ()
    unchanged: tuple[Path, ...] = ()
    removed: tuple[Path, ...] = ()


def settings(optimizer_runs: int = DEFAULT_OPTIMIZER_RUNS) -> dict[str, Any]:
    """The compiler settings every artifact records (the output selection aside)."""
    return {
        "evmVersion": EVM_VERSION,
        "metadata": {"appendCBOR": False, "bytecodeHash": "none"},
        "optimizer": {"enabled": True, "runs": optimizer_runs},
        "remappings": [],
        "viaIR": True,
    }


def find_sources(contracts_dir: Path) -> dict[str, str]:
    """Every ``*.sol`` under ``contracts_dir``, keyed by its POSIX path relative to the directory's parent, sorted."""
    root = contracts_dir.resolve()
    if not root.is_dir():
        raise CompileError(f"contracts directory {contracts_dir} does not exist")
    base = root.parent
    found = {p.relative_to(base).as_posix(): p for p in root.rglob("*.sol") if p.is_file()}
    return {key: found[key].read_text(encoding="utf-8") for key in sorted(found)}


def standard_input(sources: Mapping[str, str], optimizer_runs: int = DEFAULT_OPTIMIZER_RUNS) -> dict[str, Any]:
    return {
        "language": "Solidity",
        "sources": {key: {"content": sources[key]} for key in sorted(sources)},
        "settings": {
            **settings(optimizer_runs),
            "outputSelection": {"*": {"*": _OUTPUT_SELECTION, "": ["ast"]}},
        },
    }


def run_solc(
    input_json: Mapping[str, Any], *, solc_dir: Path | None = None, timeout: float = DEFAULT_TIMEOUT
) -> tuple[str, dict[str, Any]]:
    """Run the pinned solc-js on a standard-JSON input; returns (compiler version, standard-JSON output)."""
    node = shutil.which("node")
    if node is None:
        raise ToolchainError("node is not on PATH; solc-js needs Node 20 (install nodejs)")
    solc = solc_dir or solc_js_dir()
    try:
        # Our own script and the pinned compiler, no shell involved.
        proc = subprocess.run(  # noqa: S603
            [node, str(COMPILE_JS), str(solc)],
            input=json.dumps(input_json).encode(),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise CompileError(f"solc-js did not finish within {timeout:g} s") from None
    except OSError as exc:
        raise ToolchainError(f"could not run node: {exc}") from None
    if proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace").strip()
        raise ToolchainError(f"solc-js exited with status {proc.returncode}: {stderr}")
    try:
        reply = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise ToolchainError(f"solc-js printed something that is not JSON: {exc}") from None
    version = str(reply["version"])
    if not version.startswith(SOLC_VERSION + "+"):
        raise ToolchainError(f"solc-js at {solc} is {version}, but {SOLC_VERSION} is pinned; run `make install`")
    output: dict[str, Any] = reply["output"]
    return version, output


def compile_contracts(
    contracts_dir: Path,
    *,
    optimizer_runs: int = DEFAULT_OPTIMIZER_RUNS,
    solc_dir: Path | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Compilation:
    """Compile every source under ``contracts_dir``; raises :class:`CompileError` on any compiler error."""
    started = time.monotonic()
    sources = find_sources(contracts_dir)
    if not sources:
        return Compilation((), (), time.monotonic() - started)
    version, output = run_solc(standard_input(sources, optimizer_runs), solc_dir=solc_dir, timeout=timeout)
    diagnostics = tuple(_diagnostic(e, sources) for e in output.get("errors", []))
    errors = [d for d in diagnostics if d.severity == "error"]
    if errors:
        raise CompileError(f"compilation failed with {len(errors)} error(s)", diagnostics)
    artifacts = _artifacts(output, version, settings(optimizer_runs))
    return Compilation(artifacts, diagnostics, time.monotonic() - started)


def write_artifacts(artifacts: Sequence[Artifact], out_dir: Path) -> WriteReport:
    """Write one JSON file per artifact (only when its bytes change) and remove artifacts of vanished contracts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    unchanged: list[Path] = []
    keep: set[str] = set()
    for art in artifacts:
        path = out_dir / f"{art.contract_name}.json"
        keep.add(path.name)
        text = art.to_json()
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            unchanged.append(path)
            continue
        path.write_text(text, encoding="utf-8")
        written.append(path)
    removed = [p for p in sorted(out_dir.glob("*.json")) if p.name not in keep and _is_artifact(p)]
    for path in removed:
        path.unlink()
    return WriteReport(tuple(written), tuple(unchanged), tuple(removed))


def _is_artifact(path: Path) -> bool:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(doc, dict) and {"contractName", "abi", "bytecode", "compiler"} <= doc.keys()


def _sorted_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted_keys(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted_keys(v) for v in value]
    return value


def _diagnostic(err: Mapping[str, Any], sources: Mapping[str, str]) -> Diagnostic:
    severity = str(err.get("severity", "error"))
    kind = str(err.get("type", "Error"))
    message = str(err.get("message", "")).strip()
    loc = err.get("sourceLocation") or {}
    file = loc.get("file") or None
    line = column = None
    if isinstance(file, str) and file in sources and isinstance(loc.get("start"), int) and loc["start"] >= 0:
        # solc offsets count bytes of the UTF-8 source.
        before = sources[file].encode()[: loc["start"]].decode(errors="replace")
        line = before.count("\n") + 1
        column = len(before) - (before.rfind("\n") + 1) + 1
    return Diagnostic(severity, kind, message, file, line, column, _snippet(str(err.get("formattedMessage", ""))))


def _snippet(formatted: str) -> str:
    """The code excerpt of solc's formatted message, without its first line and ``-->`` line (the header says so)."""
    lines = formatted.rstrip().splitlines()[1:]
    return "\n".join(line for line in lines if not line.lstrip().startswith("-->"))


def _contract_kinds(output: Mapping[str, Any]) -> dict[tuple[str, str], tuple[str, bool]]:
    """(source, contract) -> (contractKind, abstract), from the top level of each source's AST."""
    kinds: dict[tuple[str, str], tuple[str, bool]] = {}
    for source, info in output.get("sources", {}).items():
        for node in info.get("ast", {}).get("nodes", []):
            if node.get("nodeType") == "ContractDefinition":
                kinds[(source, node["name"])] = (str(node["contractKind"]), bool(node.get("abstract", False)))
    return kinds


def _artifacts(output: Mapping[str, Any], version: str, used: Mapping[str, Any]) -> tuple[Artifact, ...]:
    kinds = _contract_kinds(output)
    chosen: dict[str, Artifact] = {}
    problems: list[str] = []
    for source in sorted(output.get("contracts", {})):
        contracts = output["contracts"][source]
        for name in sorted(contracts):
            kind, abstract = kinds.get((source, name), ("contract", False))
            info = contracts[name]
            abi = list(info.get("abi", []))
            if kind == "library" or abstract or (kind == "interface" and not abi):
                continue
            evm = info.get("evm", {})
            if evm.get("bytecode", {}).get("linkReferences"):
                libs = sorted(lib for refs in evm["bytecode"]["linkReferences"].values() for lib in refs)
                problems.append(
                    f"{source}: {name} needs linked libraries ({', '.join(libs)}), which abis/ does not support; "
                    "make the library functions internal"
                )
                continue
            art = Artifact(
                contract_name=name,
                source_name=source,
                abi=abi,
                bytecode="0x" + str(evm.get("bytecode", {}).get("object", "")),
                deployed_bytecode="0x" + str(evm.get("deployedBytecode", {}).get("object", "")),
                compiler_version=version,
                settings=used,
            )
            other = chosen.get(name)
            if other is None:
                chosen[name] = art
            elif not (kind == "interface" and other.bytecode == "0x" and other.abi == art.abi):
                problems.append(
                    f"two contracts named {name} ({other.source_name} and {source}): abis/{name}.json would be "
                    "ambiguous; rename one"
                )
    if problems:
        raise CompileError("cannot write the artifacts:\n" + "\n".join(f"  - {p}" for p in problems))
    return tuple(chosen[name] for name in sorted(chosen))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m relayer.codegen.compile",
        description="Compile contracts/**/*.sol with the pinned solc-js into abis/<ContractName>.json.",
    )
    parser.add_argument("--contracts", type=Path, default=Path("contracts"), help="source directory (contracts)")
    parser.add_argument("--out", type=Path, default=Path("abis"), help="artifact directory (abis)")
    parser.add_argument("--optimizer-runs", type=int, default=DEFAULT_OPTIMIZER_RUNS, help="optimizer runs (200)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="compiler time limit, seconds (600)")
    args = parser.parse_args(argv)
    try:
        result = compile_contracts(args.contracts, optimizer_runs=args.optimizer_runs, timeout=args.timeout)
    except CompileError as exc:
        for diag in exc.diagnostics:
            print(diag.render(), file=sys.stderr)
        print(f"compile: {str(exc).splitlines()[0] if exc.diagnostics else exc}", file=sys.stderr)
        return 1
    except ToolchainError as exc:
        print(f"compile: {exc}", file=sys.stderr)
        return 2
    for diag in result.diagnostics:
        print(diag.render(), file=sys.stderr)
    report = write_artifacts(result.artifacts, args.out)
    for path in report.written:
        print(f"compile: wrote {path}")
    for path in report.removed:
        print(f"compile: removed stale {path}")
    print(
        f"compile: {len(result.artifacts)} artifact(s) in {args.out} ({len(report.written)} written, "
        f"{len(report.unchanged)} unchanged, {len(report.removed)} removed) in {result.seconds:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
