"""Shoal's environments: the C games (shoal.envs.native, needing the compiled extension) and
`shoal.envs.registry.make`, which builds any env from its name.

Nothing is imported here, so the pure-Python modules of this layer load without the extension.
"""
