"""Builds the one Cython extension, fastlvs._core.

Everything else (metadata, packages, extras) lives in pyproject.toml.
"""
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "fastlvs._core",
        ["src/fastlvs/_core.pyx"],
        include_dirs=["src/fastlvs/includes"],
        extra_compile_args=["-O3", "-fno-strict-aliasing"],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        include_path=["src/fastlvs/includes"],
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    )
)
