"""Typed Python bindings generated from abis/ by the project's own generator (`make bindings`).

The generator and the exchange contract's bindings arrive with the contracts issue (#3); this package is where they
land, checked by mypy --strict like relayer/.
"""
