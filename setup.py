"""Build script for fastctc: one Cython extension per pyx/fastctc/*.pyx over the
header-only C core in include/fastctc/, with OpenMP when the compiler has it.

Metadata lives in pyproject.toml; this file only describes the compiled parts and
the data copied into the package.  Nothing here runs a compiler, imports Cython or
imports NumPy until an extension is actually built, so `python -m build --sdist`,
`setup.py egg_info` and metadata queries work on a machine without any of them.

Knobs (environment variables, read when the extension is compiled):
  FASTCTC_NO_OPENMP=1       build without OpenMP (serial; fastctc.info()["openmp"] is False)
  FASTCTC_REQUIRE_OPENMP=1  fail the build instead of falling back to serial (CI and the
                            wheel builders set it, so a wheel can never silently lose threads)
  LIBOMP_PREFIX=/path       macOS: where libomp lives (default: Homebrew's opt/libomp)
No CUDA is needed at build time: cuda/ctc.cu ships as package data and is compiled by
NVRTC on first use.  Only baseline compiler flags are used (never -march=native): the
vector kernels are compiled through target attributes and chosen at run time, so one
wheel per Python version serves every CPU of its architecture.
"""
import glob
import os
import sys
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))

# Source-tree folders copied into the package at build time: (folder, required).  The
# headers are required (fastctc.get_include() must work from any wheel); the CUDA
# source is optional so that a CPU-only checkout still builds.
PACKAGE_DATA_TREES = (("include", True), ("cuda", False))
SKIP_NAMES = ("__pycache__",)
SKIP_SUFFIXES = (".pyc", ".pyo", ".o", ".so")

OMP_PROBE = r"""
#include <omp.h>
int main(void) {
    int n = 0;
    #pragma omp parallel
    {
        #pragma omp atomic
        n += 1;
    }
    return n < 1 || omp_get_max_threads() < 1;
}
"""


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _probe(compiler, compile_flags, link_flags):
    """True if `compiler` (the one that will build the extension) compiles and links a
    small OpenMP program with these flags."""
    from setuptools.errors import CCompilerError, ExecError

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "fastctc_omp_probe.c")
        with open(src, "w") as fh:
            fh.write(OMP_PROBE)
        try:
            objects = compiler.compile([src], output_dir=tmp, extra_postargs=compile_flags)
            compiler.link_executable(objects, "fastctc_omp_probe", output_dir=tmp,
                                     extra_postargs=link_flags)
        except (CCompilerError, ExecError, OSError):
            return False
    return True


def _openmp_candidates(compiler):
    """(compile flags, link flags) to try, best first, for this compiler and platform."""
    if compiler.compiler_type == "msvc":
        # MSVC implements OpenMP 2.0: parallel-for indices must be signed, which is what
        # Cython generates for prange (Py_ssize_t), so no source change is needed.
        return [(["/openmp"], [])]
    candidates = [(["-fopenmp"], ["-fopenmp"])]
    if sys.platform == "darwin":
        # Apple clang has no bundled OpenMP runtime: use libomp (brew install libomp).
        prefixes = [os.environ.get("LIBOMP_PREFIX"), "/opt/homebrew/opt/libomp", "/usr/local/opt/libomp"]
        for prefix in [p for p in prefixes if p]:
            candidates.append((["-Xpreprocessor", "-fopenmp", f"-I{prefix}/include"],
                               [f"-L{prefix}/lib", "-lomp", f"-Wl,-rpath,{prefix}/lib"]))
    return candidates


def openmp_flags(compiler):
    """(compile, link) flags for OpenMP with this compiler, or ([], []) to build serially."""
    if _flag("FASTCTC_NO_OPENMP"):
        if _flag("FASTCTC_REQUIRE_OPENMP"):
            sys.exit("fastctc: FASTCTC_NO_OPENMP and FASTCTC_REQUIRE_OPENMP are both set")
        print("fastctc: FASTCTC_NO_OPENMP is set; building the serial engine", file=sys.stderr)
        return [], []
    for compile_flags, link_flags in _openmp_candidates(compiler):
        if _probe(compiler, compile_flags, link_flags):
            return compile_flags, link_flags
    if _flag("FASTCTC_REQUIRE_OPENMP"):
        sys.exit("fastctc: FASTCTC_REQUIRE_OPENMP is set but the C compiler cannot build "
                 "and link OpenMP code (on macOS: brew install libomp, or set LIBOMP_PREFIX)")
    print("fastctc: OpenMP not available; building the serial engine", file=sys.stderr)
    return [], []


class BuildExt(build_ext):
    """Cythonizes, then compiles with the flags this compiler supports.  Cython, NumPy
    and the OpenMP probe are only needed here, so metadata and sdist steps avoid them."""

    def run(self):
        import numpy
        from Cython.Build import cythonize

        for ext in self.extensions:
            if numpy.get_include() not in ext.include_dirs:
                ext.include_dirs.append(numpy.get_include())
            # cythonize() returns plain distutils Extensions; keep setuptools' own objects
            # (finalize_options already decorated them) and only swap .pyx for the .c.
            (translated,) = cythonize([ext], compiler_directives={"language_level": 3},
                                      force=self.force, quiet=True)
            ext.sources = translated.sources
        super().run()

    def build_extensions(self):
        omp_compile, omp_link = openmp_flags(self.compiler)
        if self.compiler.compiler_type == "msvc":
            base = ["/O2"]
        else:
            base = ["-O3", "-fno-math-errno", "-Wno-unused-function"]
        # distutils rebuilds on timestamps only: when the flags differ from the previous
        # build in this build_temp (FASTCTC_NO_OPENMP or CFLAGS changed), rebuild everything.
        stamp = os.path.join(self.build_temp, "fastctc-flags.txt")
        key = repr((base, omp_compile, omp_link,
                    [os.environ.get(v) for v in ("CC", "CFLAGS", "CPPFLAGS", "LDFLAGS")]))
        try:
            with open(stamp) as fh:
                changed = fh.read() != key
        except OSError:
            changed = True
        if changed:
            self.force = True
            os.makedirs(self.build_temp, exist_ok=True)
            with open(stamp, "w") as fh:
                fh.write(key)
        for ext in self.extensions:
            ext.extra_compile_args = base + omp_compile + list(ext.extra_compile_args or [])
            ext.extra_link_args = omp_link + list(ext.extra_link_args or [])
        super().build_extensions()


class BuildPyWithData(build_py):
    """Ships the C headers and the CUDA source inside the package (fastctc/include,
    fastctc/cuda) so fastctc.get_include() and the NVRTC path work from a wheel.

    In a (default, lenient) editable install nothing is copied: the package is imported
    from pyx/ and finds ../../include and ../../cuda in the source tree instead.  The
    files are also reported through get_output_mapping() so strict editable installs
    link them."""

    def _extra_files(self):
        """[(destination in build_lib, source file)] for the copied trees."""
        pairs = []
        package_dir = os.path.join(self.build_lib, "fastctc")
        for folder, required in PACKAGE_DATA_TREES:
            root = os.path.join(HERE, folder)
            if not os.path.isdir(root):
                if required:
                    raise FileNotFoundError(f"fastctc: {root} is missing; the package needs its headers")
                continue
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = sorted(d for d in dirnames if d not in SKIP_NAMES)
                for name in sorted(filenames):
                    if name.endswith(SKIP_SUFFIXES):
                        continue
                    src = os.path.join(dirpath, name)
                    pairs.append((os.path.join(package_dir, os.path.relpath(src, HERE)), src))
        if not any(dest.endswith(os.path.join("fastctc", "fastctc.h")) for dest, _ in pairs):
            raise FileNotFoundError("fastctc: include/fastctc/fastctc.h is missing")
        return pairs

    def run(self):
        super().run()
        if self.editable_mode:
            return
        for dest, src in self._extra_files():
            self.mkpath(os.path.dirname(dest))
            self.copy_file(src, dest, preserve_mode=False)

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        if not self.editable_mode:  # in editable mode the mapping below already has them
            outputs = list(outputs) + [dest for dest, _ in self._extra_files()]
        return outputs

    def get_output_mapping(self):
        mapping = dict(super().get_output_mapping())
        mapping.update(self._extra_files())
        return dict(sorted(mapping.items()))


extensions = [
    Extension(
        name="fastctc." + os.path.splitext(os.path.basename(path))[0],
        sources=[os.path.relpath(path, HERE).replace(os.sep, "/")],
        include_dirs=[os.path.join(HERE, "include")],
        # The C core is header-only: an edited header must rebuild the extension.
        depends=sorted(os.path.relpath(p, HERE).replace(os.sep, "/") for p in
                       glob.glob(os.path.join(HERE, "include", "**", "*.*"), recursive=True)
                       # C headers next to the .pyx files (the XLA FFI handler, _xla_ffi.h)
                       + glob.glob(os.path.join(HERE, "pyx", "fastctc", "*.h"))),
        define_macros=[
            ("FASTCTC_IMPLEMENTATION", "1"),
            ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
            # The compiled module runs on every NumPy the dependency range allows.
            ("NPY_TARGET_VERSION", "NPY_1_22_API_VERSION"),
        ],
    )
    for path in sorted(glob.glob(os.path.join(HERE, "pyx", "fastctc", "*.pyx")))
]

setup(
    ext_modules=extensions,
    cmdclass={"build_ext": BuildExt, "build_py": BuildPyWithData},
)
