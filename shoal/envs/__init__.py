"""Shoal's environments: the C games (shoal.envs.native) and their Gymnasium view."""

from shoal.envs.native import Batch, GymnasiumView, NativeVecEnv, native_env_names

__all__ = ["Batch", "GymnasiumView", "NativeVecEnv", "native_env_names"]
