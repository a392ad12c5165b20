"""Builds the one Cython extension, fastlvs.engine._core, and the XDP steering program.

With libxdp-dev and libbpf-dev installed, _core is built with the AF_XDP backend (FL_HAVE_XDP,
linked with -lxdp -lbpf); with clang, src/fastlvs/engine/bpf/steer.bpf.c is compiled into
steer.bpf.o (package data). Without them the build still succeeds, AF_PACKET only, and asking
for the XDP backend says what was missing. FASTLVS_NO_XDP=1 forces the AF_PACKET-only build.
Everything else (metadata, packages, extras) lives in pyproject.toml.
"""
import os
import shutil
import subprocess
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
BPF_SRC = os.path.join("src", "fastlvs", "engine", "bpf", "steer.bpf.c")
BPF_OBJ = os.path.join("src", "fastlvs", "engine", "bpf", "steer.bpf.o")
XDP_HEADERS = ("/usr/include/xdp/xsk.h", "/usr/include/bpf/libbpf.h")
HAVE_XDP = (os.environ.get("FASTLVS_NO_XDP") != "1"
            and all(os.path.exists(h) for h in XDP_HEADERS))


def build_bpf():
    """clang -target bpf, only when steer.bpf.o is missing or older than its source."""
    src, obj = os.path.join(HERE, BPF_SRC), os.path.join(HERE, BPF_OBJ)
    clang = shutil.which("clang")
    if clang is None:
        print("fastlvs: clang not found, XDP steering program not built", file=sys.stderr)
        return
    if os.path.exists(obj) and os.path.getmtime(obj) >= os.path.getmtime(src):
        return
    arch_inc = f"/usr/include/{os.uname().machine}-linux-gnu"
    cmd = [clang, "-O2", "-g", "-Wall", "-target", "bpf", "-I", arch_inc, "-c", src, "-o", obj]
    print(" ".join(cmd), file=sys.stderr)
    subprocess.check_call(cmd)


class BuildExt(build_ext):
    def run(self):
        if HAVE_XDP:
            build_bpf()
        super().run()


macros = [("FL_HAVE_XDP", "1")] if HAVE_XDP else []
libraries = ["xdp", "bpf"] if HAVE_XDP else []

extensions = [
    Extension(
        "fastlvs.engine._core",
        ["src/fastlvs/engine/_core.pyx"],
        include_dirs=["src/fastlvs/engine/includes"],
        define_macros=macros,
        libraries=libraries,
        extra_compile_args=["-O3", "-fno-strict-aliasing"],
    )
]

setup(
    cmdclass={"build_ext": BuildExt},
    package_data={"fastlvs.engine": ["bpf/steer.bpf.c", "bpf/steer.bpf.o"]},
    ext_modules=cythonize(
        extensions,
        language_level=3,
        include_path=["src/fastlvs/engine/includes"],
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
)
