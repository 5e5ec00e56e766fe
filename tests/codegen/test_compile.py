"""The compile step: pinned solc-js through standard JSON, one deterministic artifact per contract, readable errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from relayer.codegen import compile as compiler

from . import COMPILE_TIMEOUT, ROOT, Build, build, copy_sources

ARTIFACT_KEYS = ["contractName", "sourceName", "abi", "bytecode", "deployedBytecode", "compiler"]
CBOR_SOLC_MARKER = "64736f6c6343"  # "solc" + version in the CBOR metadata trailer solc appends by default


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Build:
    return build(tmp_path_factory)


def run_cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYER")}
    return subprocess.run(
        [sys.executable, "-m", "relayer.codegen.compile", *map(str, args)],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=COMPILE_TIMEOUT + 30,
        check=False,
    )


def write_contract(dest: Path, name: str, body: str) -> Path:
    contracts = dest / "contracts"
    contracts.mkdir(parents=True, exist_ok=True)
    path = contracts / f"{name}.sol"
    path.write_text(f"// SPDX-License-Identifier: MIT\npragma solidity 0.8.30;\n\n{body}")
    return path


def test_one_artifact_per_concrete_contract_and_interface(built: Build) -> None:
    # Sample (contract), ISample (interface) and TestToken; not SampleBase (abstract) nor SampleLib (library).
    assert sorted(p.name for p in built.abis.iterdir()) == ["ISample.json", "Sample.json", "TestToken.json"]
    sample = json.loads((built.abis / "Sample.json").read_text())
    assert list(sample) == ARTIFACT_KEYS
    assert sample["contractName"] == "Sample"
    assert sample["sourceName"] == "contracts/Sample.sol"
    assert sample["bytecode"].startswith("0x60") and len(sample["deployedBytecode"]) > 100
    # Events emitted through a library and declared in the abstract base are part of the ABI.
    events = {e["name"] for e in sample["abi"] if e["type"] == "event"}
    assert {"LibNote", "BaseEvent", "Placed", "Tagged", "Ping"} <= events
    interface = json.loads((built.abis / "ISample.json").read_text())
    assert interface["bytecode"] == interface["deployedBytecode"] == "0x"
    assert [e["name"] for e in interface["abi"]] == ["echo"]


def test_artifacts_record_the_pinned_compiler_and_settings(built: Build) -> None:
    for path in built.abis.glob("*.json"):
        text = path.read_text()
        doc = json.loads(text)
        assert text == json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
        assert doc["compiler"]["version"].startswith(compiler.SOLC_VERSION + "+commit.")
        assert doc["compiler"]["settings"] == {
            "evmVersion": "cancun",
            "metadata": {"appendCBOR": False, "bytecodeHash": "none"},
            "optimizer": {"enabled": True, "runs": 200},
            "remappings": [],
            "viaIR": True,
        }
        # No metadata trailer: the bytecode does not depend on source paths or comments.
        assert CBOR_SOLC_MARKER not in doc["deployedBytecode"]


def test_compilation_is_deterministic_byte_for_byte_wherever_the_tree_lives(built: Build, tmp_path: Path) -> None:
    # A second compilation of a copy at another absolute path, through the CLI, gives the same bytes.
    other = tmp_path / "elsewhere" / "checkout"
    contracts = copy_sources(other)
    out = tmp_path / "abis"
    proc = run_cli("--contracts", contracts, "--out", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # the fixtures compile without warnings
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in built.abis.iterdir())
    for path in built.abis.iterdir():
        assert (out / path.name).read_bytes() == path.read_bytes(), path.name
    # A run on unchanged sources rewrites nothing.
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = run_cli("--contracts", contracts, "--out", out, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "(0 written, 3 unchanged, 0 removed)" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes


def test_compile_error_names_file_line_and_column_and_writes_nothing(tmp_path: Path) -> None:
    write_contract(
        tmp_path,
        "Broken",
        "contract Broken {\n    function f() external pure returns (uint256) {\n"
        "        return missing + 1;\n    }\n}\n",
    )
    out = tmp_path / "abis"
    out.mkdir()
    keep = out / "Old.json"
    keep.write_text(json.dumps({"contractName": "Old", "abi": [], "bytecode": "0x", "compiler": {}}))
    proc = run_cli("--contracts", "contracts", "--out", "abis", cwd=tmp_path)
    assert proc.returncode == 1
    assert "contracts/Broken.sol:6:16: error: DeclarationError: Undeclared identifier." in proc.stderr
    assert "return missing + 1;" in proc.stderr  # the code excerpt from solc
    assert "compile: compilation failed with 1 error(s)" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["Old.json"]  # nothing written, nothing removed


def test_warnings_are_printed_and_stale_artifacts_removed(tmp_path: Path) -> None:
    write_contract(
        tmp_path,
        "Warn",
        "contract Warn {\n    function f(uint256 unused) external pure returns (uint256) {\n"
        "        return 1;\n    }\n}\n",
    )
    out = tmp_path / "abis"
    out.mkdir()
    stale = out / "Gone.json"
    stale.write_text(json.dumps({"contractName": "Gone", "abi": [], "bytecode": "0x", "compiler": {}}))
    other = out / "notes.json"
    other.write_text('{"not": "an artifact"}')
    proc = run_cli("--contracts", "contracts", "--out", "abis", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "contracts/Warn.sol:5:16: warning: Unused function parameter." in proc.stderr
    assert "removed stale abis/Gone.json" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["Warn.json", "notes.json"]


def test_two_contracts_with_one_name_are_refused(tmp_path: Path) -> None:
    write_contract(tmp_path, "A", "contract Dup {}\n")
    write_contract(tmp_path, "B", "contract Dup { uint256 public x; }\n")
    with pytest.raises(compiler.CompileError, match=r"two contracts named Dup \(contracts/A.sol and contracts/B.sol\)"):
        compiler.compile_contracts(tmp_path / "contracts", timeout=COMPILE_TIMEOUT)


def test_imports_outside_the_contracts_directory_are_refused(tmp_path: Path) -> None:
    (tmp_path / "Outside.sol").write_text("// SPDX-License-Identifier: MIT\npragma solidity 0.8.30;\ncontract O {}\n")
    write_contract(tmp_path, "In", 'import "../Outside.sol";\ncontract In {}\n')
    with pytest.raises(compiler.CompileError) as info:
        compiler.compile_contracts(tmp_path / "contracts", timeout=COMPILE_TIMEOUT)
    [error] = [d for d in info.value.diagnostics if d.severity == "error"]
    assert error.file == "contracts/In.sol" and error.line == 4
    assert "is not among the compiled sources" in error.message


def test_missing_directory_and_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(compiler.CompileError, match="does not exist"):
        compiler.compile_contracts(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert compiler.compile_contracts(tmp_path / "empty").artifacts == ()
