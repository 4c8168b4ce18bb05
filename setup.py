"""Builds the C environments into shoal.envs._native (plain C11, libc and libm only)."""

from setuptools import Extension, setup

native = Extension(
    "shoal.envs._native",
    sources=["shoal/envs/csrc/binding.c"],
    depends=["shoal/envs/csrc/env_api.h", "shoal/envs/csrc/games.h"],
    include_dirs=["shoal/envs/csrc"],
    extra_compile_args=["-std=c11", "-O3", "-fno-math-errno", "-Wall", "-Wno-unused-function"],
    libraries=["m", "pthread"],
)

setup(ext_modules=[native])
