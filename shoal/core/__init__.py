"""The bottom layer: the config, the vector-env contract, validators, names and atomic files.

Nothing here imports another part of Shoal or the C extension (docs/architecture.md).
"""
