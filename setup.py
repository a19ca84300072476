"""Build script for fastctc: one Cython extension per pyx/fastctc/*.pyx over the
header-only C core in include/fastctc/, with OpenMP when the compiler has it.

Knobs (environment variables):
  FASTCTC_NO_OPENMP=1       build without OpenMP (serial; fastctc.info() says so)
  FASTCTC_REQUIRE_OPENMP=1  fail the build instead of falling back to serial (CI sets it)
No CUDA is needed at build time: cuda/ctc.cu ships as package data and is compiled by
NVRTC on first use.  Only baseline compiler flags are used (never -march=native): the
vector kernels are compiled through target attributes and chosen at run time.
"""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _compiler_works(extra_compile, extra_link):
    """True if the C compiler builds and links a tiny OpenMP program with these flags."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    src = "#include <omp.h>\nint main(void){int n=0;\n#pragma omp parallel\n{n=omp_get_num_threads();}\nreturn n<1;}\n"
    with tempfile.TemporaryDirectory() as tmp:
        c_file = os.path.join(tmp, "probe.c")
        with open(c_file, "w") as fh:
            fh.write(src)
        cmd = cc.split() + [c_file, "-o", os.path.join(tmp, "probe")] + extra_compile + extra_link
        try:
            return subprocess.run(cmd, capture_output=True).returncode == 0
        except OSError:
            return False


def openmp_flags():
    """(compile, link) flags for OpenMP on this platform, or ([], []) without it."""
    if _flag("FASTCTC_NO_OPENMP"):
        return [], []
    if sys.platform == "win32":
        return ["/openmp"], []
    candidates = [(["-fopenmp"], ["-fopenmp"])]
    if sys.platform == "darwin":  # Apple clang needs libomp (brew install libomp)
        prefix = os.environ.get("LIBOMP_PREFIX", "/opt/homebrew/opt/libomp")
        candidates.insert(0, (["-Xpreprocessor", "-fopenmp", f"-I{prefix}/include"],
                              [f"-L{prefix}/lib", "-lomp"]))
    for compile_flags, link_flags in candidates:
        if _compiler_works(compile_flags, link_flags):
            return compile_flags, link_flags
    if _flag("FASTCTC_REQUIRE_OPENMP"):
        sys.exit("fastctc: FASTCTC_REQUIRE_OPENMP is set but the compiler cannot build OpenMP code")
    print("fastctc: OpenMP not available; building the serial engine", file=sys.stderr)
    return [], []


class BuildPyWithData(build_py):
    """Ships the C headers and the CUDA source inside the package (fastctc/include,
    fastctc/cuda) so fastctc.get_include() and the NVRTC path work from a wheel."""

    def run(self):
        super().run()
        if self.dry_run:
            return
        target = os.path.join(self.build_lib, "fastctc")
        for sub in ("include", "cuda"):
            src = os.path.join(HERE, sub)
            dst = os.path.join(target, sub)
            if os.path.isdir(src):
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


omp_compile, omp_link = openmp_flags()
if sys.platform == "win32":
    base_flags = ["/O2"]
else:
    base_flags = ["-O3", "-fno-math-errno", "-Wno-unused-function"]

extensions = [
    Extension(
        name="fastctc." + os.path.splitext(os.path.basename(path))[0],
        sources=[os.path.relpath(path, HERE)],
        include_dirs=[os.path.join(HERE, "include"), numpy.get_include()],
        define_macros=[("FASTCTC_IMPLEMENTATION", "1"), ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=base_flags + omp_compile,
        extra_link_args=omp_link,
    )
    for path in sorted(glob.glob(os.path.join(HERE, "pyx", "fastctc", "*.pyx")))
]

setup(
    ext_modules=cythonize(extensions, compiler_directives={"language_level": 3}),
    cmdclass={"build_py": BuildPyWithData},
)
