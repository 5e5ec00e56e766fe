"""perp-relayer: the relayer node of a decentralised perpetual-futures exchange."""

__version__ = "0.1.0"
