"""Typed Python bindings generated from abis/ by the project's own generator (`make bindings`).

One module per compiled contract (relayer.codegen.abigen): frozen dataclasses for structs, typed
encoders and decoders for every function, event classes that decode raw JSON-RPC logs, and custom
errors as exceptions.
Never edited by hand: CI regenerates them and fails on any difference (`make check-generated`).
"""
