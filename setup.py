"""Builds the C environments into shoal.envs._native (plain C11, libc, libm and pthread only).

Set SHOAL_NATIVE_ARCH=1 to compile with -march=native (only for builds that run on the machine
that compiled them).
"""

import glob
import os

from setuptools import Extension, setup

compile_args = ["-std=c11", "-O3", "-fno-math-errno", "-Wall", "-Wno-unused-function"]
if os.environ.get("SHOAL_NATIVE_ARCH") == "1":
    compile_args.append("-march=native")

native = Extension(
    "shoal.envs._native",
    sources=["shoal/envs/csrc/binding.c"],
    depends=sorted(glob.glob("shoal/envs/csrc/*.h")),
    include_dirs=["shoal/envs/csrc"],
    extra_compile_args=compile_args,
    libraries=["m", "pthread"],
)

setup(ext_modules=[native])
