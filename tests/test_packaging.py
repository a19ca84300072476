"""Packaging tests: the sdist holds everything needed to build from scratch, the wheel
built from that sdist holds the compiled engine, the C headers and the CUDA source, and
that wheel works in a fresh virtual environment with no compiler (CC=false, CXX=false).

The slow tests build for real (one wheel from the sdist, one serial FASTCTC_NO_OPENMP
build) without build isolation, so they use the NumPy/Cython/setuptools already
installed and need no network.  auditwheel checks run when auditwheel is installed.
"""
import glob
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

import fastctc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "tests", "installed_smoke.py")
IS_SOURCE_CHECKOUT = os.path.isfile(os.path.join(ROOT, "setup.py")) and os.path.isdir(
    os.path.join(ROOT, "include", "fastctc"))
needs_checkout = pytest.mark.skipif(not IS_SOURCE_CHECKOUT,
                                    reason="needs the source checkout (setup.py, include/)")

# Folders and files the sdist must carry.  Folders that do not exist in this checkout
# (e.g. cuda/ before the GPU engine lands) are only required once they do.
SDIST_FOLDERS = ("include", "pyx", "cuda", "tests", "examples", "benchmarks")
SDIST_FILES = ("README.md", "LICENSE", "pyproject.toml", "setup.py", "MANIFEST.in")
# The only shared libraries a Linux build may need outside the wheel: glibc's, and the
# OpenMP runtime (which auditwheel repair copies into the wheel).
ALLOWED_LIBS = re.compile(r"^(libc|libm|libpthread|libdl|librt|libgomp|ld-linux[\w-]*)\.so[.\d]*$")


def _run(cmd, cwd=None, env=None, timeout=600):
    """Run a command; on failure show its output (pytest prints the assertion)."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
        f"\n--- stderr\n{proc.stderr[-4000:]}")
    return proc


def _tracked_files(folder):
    """Files of a source folder that belong in the sdist: git's view when the checkout is
    a git repository (build outputs are ignored there), else a filtered walk."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--", folder], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        if out.returncode == 0 and out.stdout:
            return sorted(f for f in out.stdout.split("\0")
                          if f and os.path.isfile(os.path.join(ROOT, f)))
    except (OSError, subprocess.SubprocessError):
        pass
    found = []
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, folder)):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__pycache__"]
        for name in filenames:
            if not name.endswith((".so", ".pyd", ".pyc", ".o", ".c")):
                found.append(os.path.relpath(os.path.join(dirpath, name), ROOT).replace(os.sep, "/"))
    return sorted(found)


IGNORED_IN_COPY = shutil.ignore_patterns(
    ".git", "build", "dist", "wheelhouse", "*.egg-info", "__pycache__", "*.so", "*.pyd", "*.o",
    ".pytest_cache", ".hypothesis", ".venv*", ".whl", ".gl")


def _clean_copy(dest):
    """Copy the checkout's non-ignored files (git's view, else a filtered tree) to dest."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
        files = [f for f in out.stdout.split("\0") if f] if out.returncode == 0 else []
    except (OSError, subprocess.SubprocessError):
        files = []
    if not files:
        shutil.copytree(ROOT, dest, ignore=IGNORED_IN_COPY)
        return dest
    for rel in files:
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, rel))
    return dest


def _build_env(**extra):
    env = dict(os.environ)
    for key in ("PYTHONPATH", "FASTCTC_NO_OPENMP", "FASTCTC_REQUIRE_OPENMP"):
        env.pop(key, None)
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    env.update(extra)
    return env


def _pyproject():
    """pyproject.toml parsed, or None outside a checkout / without a TOML parser."""
    if not IS_SOURCE_CHECKOUT:
        return None
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        try:
            import tomli as tomllib
        except ImportError:
            return None
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        return tomllib.load(fh)


# ---------------------------------------------------------------- cheap checks


def test_version_is_single_sourced():
    from fastctc import _version

    assert fastctc.__version__ == _version.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]|rc|\.dev|\.post)?\d*", fastctc.__version__)
    cfg = _pyproject()
    if cfg is not None:
        assert "version" not in cfg["project"], "pyproject.toml must not repeat the version"
        assert "version" in cfg["project"]["dynamic"]
        assert cfg["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "fastctc._version.__version__"}


def _header_files(root):
    """Every header under root/fastctc, as paths relative to root/fastctc ('detail/...')."""
    base = os.path.join(root, "fastctc")
    return sorted(os.path.relpath(os.path.join(d, f), base).replace(os.sep, "/")
                  for d, _, files in os.walk(base) for f in files if not f.startswith("."))


def test_get_include_has_every_header():
    """Wheel, editable install and PYTHONPATH=pyx all expose the full header set: one
    public header, the internal ones under fastctc/detail/."""
    include = fastctc.get_include()
    assert os.path.isfile(os.path.join(include, "fastctc", "fastctc.h"))
    if IS_SOURCE_CHECKOUT:
        expected = _header_files(os.path.join(ROOT, "include"))
        assert _header_files(include) == expected
        assert [h for h in expected if "/" not in h] == ["fastctc.h"]   # one public header


@needs_checkout
def test_license_is_mit():
    with open(os.path.join(ROOT, "LICENSE")) as fh:
        text = fh.read()
    assert text.startswith("MIT License") and "the fastctc authors" in text
    with open(os.path.join(ROOT, "pyproject.toml")) as fh:
        assert re.search(r'(?m)^license = "MIT"$', fh.read())


@needs_checkout
def test_cibuildwheel_recipe():
    """The manylinux recipe says what the README promises (parsed, not grepped)."""
    cfg = _pyproject()
    if cfg is None:
        pytest.skip("no TOML parser (tomllib is Python 3.11+; tomli not installed)")
    cib = cfg["tool"]["cibuildwheel"]
    builds = cib["build"].split()
    assert [f"cp3{minor}-*" for minor in range(9, 14)] == builds
    for pattern in ("pp*", "*-musllinux_*", "*_i686", "*-win32"):
        assert pattern in cib["skip"].split()
    assert cib["environment"]["FASTCTC_REQUIRE_OPENMP"] == "1"
    assert "installed_smoke.py" in cib["test-command"]
    linux = cib["linux"]
    assert linux["archs"] == ["x86_64", "aarch64"]
    assert linux["manylinux-x86_64-image"] == linux["manylinux-aarch64-image"] == "manylinux_2_28"
    extras = cfg["project"]["optional-dependencies"]
    assert {"test", "torch", "jax", "cuda", "dask"} <= set(extras)


@needs_checkout
def test_no_march_flags():
    """One wheel per Python version must run on every CPU: the SIMD level is picked at
    run time, so no host-specific -march/-mavx flag may reach the compiler."""
    with open(os.path.join(ROOT, "setup.py")) as fh:
        text = fh.read()
    assert not re.search(r"[\"']-(march|mtune|mavx|mfma|msse|mcpu)", text)


# ---------------------------------------------------------------- real builds


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """sdist of this checkout, unpacked, and a wheel built from the unpacked sdist."""
    if not IS_SOURCE_CHECKOUT:
        pytest.skip("needs the source checkout (setup.py, include/)")
    tmp = tmp_path_factory.mktemp("packaging")
    dist = tmp / "dist"
    env = _build_env()
    # Build the sdist from a copy without ignored files: a stale *.egg-info/SOURCES.txt
    # in the checkout would otherwise keep files in the sdist that MANIFEST.in dropped.
    tree = _clean_copy(tmp / "tree")
    try:
        import build  # noqa: F401  (python -m build, the documented front end)
        cmd = [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(dist), str(tree)]
    except ImportError:
        cmd = [sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(dist)]
    _run(cmd, cwd=str(tree), env=env)
    (sdist,) = glob.glob(str(dist / "fastctc-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
        tar.extractall(tmp / "unpacked")
    (src,) = glob.glob(str(tmp / "unpacked" / "fastctc-*"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps",
          "--no-index", "--no-cache-dir", "-q", "-w", str(dist), src], cwd=str(tmp), env=env)
    (wheel,) = glob.glob(str(dist / "fastctc-*.whl"))
    return {"tmp": tmp, "sdist": sdist, "sdist_names": names, "src": src, "wheel": wheel}


@pytest.mark.slow
def test_sdist_contents(built):
    top = os.path.commonprefix(built["sdist_names"]).split("/")[0]
    names = {n[len(top) + 1:] for n in built["sdist_names"] if n.startswith(top + "/")}
    for name in SDIST_FILES:
        assert name in names, f"sdist lacks {name}"
    for folder in SDIST_FOLDERS:
        if not os.path.isdir(os.path.join(ROOT, folder)):
            continue
        missing = [f for f in _tracked_files(folder) if f not in names]
        assert not missing, f"sdist lacks {missing[:10]}"
    for required in ("include/fastctc/fastctc.h", "pyx/fastctc/_core.pyx", "pyx/fastctc/_version.py"):
        assert required in names
    built_outputs = [n for n in names if n.endswith((".so", ".pyd", ".o", ".pyc"))
                     or re.fullmatch(r"pyx/fastctc/[^/]+\.c", n)]
    assert not built_outputs, f"sdist carries build outputs: {built_outputs}"


@pytest.mark.slow
def test_wheel_contents(built):
    with zipfile.ZipFile(built["wheel"]) as whl:
        names = set(whl.namelist())
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = whl.read(meta_name).decode()
        entry_points = whl.read(meta_name.replace("METADATA", "entry_points.txt")).decode()
    pyx_modules = [os.path.splitext(os.path.basename(p))[0]
                   for p in glob.glob(os.path.join(ROOT, "pyx", "fastctc", "*.pyx"))]
    assert pyx_modules
    for module in pyx_modules:
        assert any(re.fullmatch(rf"fastctc/{module}\..*(so|pyd)", n) for n in names), module
    for header in _header_files(os.path.join(ROOT, "include")):
        assert f"fastctc/include/fastctc/{header}" in names
    if os.path.isfile(os.path.join(ROOT, "cuda", "ctc.cu")):
        assert "fastctc/cuda/ctc.cu" in names
    assert not [n for n in names if n.endswith((".pyx", ".c"))], "wheel ships build sources"
    assert re.search(rf"(?m)^Version: {re.escape(fastctc.__version__)}$", metadata)
    assert re.search(r"(?m)^License-Expression: MIT$", metadata)
    for extra in ("test", "torch", "jax", "cuda", "dask"):
        assert re.search(rf"(?m)^Provides-Extra: {extra}$", metadata), extra
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "fastctc = fastctc.cli:main" in entry_points


def _auditwheel():
    exe = shutil.which("auditwheel")
    if exe is None or not sys.platform.startswith("linux"):
        return None
    return exe


@pytest.mark.slow
@pytest.mark.skipif(_auditwheel() is None, reason="auditwheel is not installed (Linux only)")
def test_auditwheel_show(built):
    """The extension needs nothing outside the wheel but glibc and the OpenMP runtime,
    so auditwheel repair (cibuildwheel's default) yields a manylinux wheel."""
    out = _run([_auditwheel(), "show", built["wheel"]]).stdout
    text = " ".join(out.split())
    libs = set(re.findall(r"\b((?:lib|ld-)[\w+-]*\.so(?:\.\d+)*)", text))
    assert libs, out
    assert all(ALLOWED_LIBS.match(lib) for lib in libs), f"unexpected libraries: {sorted(libs)}"
    tag = re.search(r"constrains the platform tag to \"(manylinux_\d+_\d+_\w+)\"", text)
    tag = tag or re.search(r"consistent with the following platform tag: \"(manylinux_\d+_\d+_\w+)\"", text)
    assert tag, out


def _repaired_wheel(built):
    """auditwheel-repaired copy of the wheel (libgomp grafted in), or None when auditwheel
    or patchelf is missing."""
    if _auditwheel() is None or shutil.which("patchelf") is None:
        return None
    out = " ".join(_run([_auditwheel(), "show", built["wheel"]]).stdout.split())
    tag = re.search(r"\"(manylinux_\d+_\d+_\w+)\"", out)
    if tag is None:
        return None
    dest = built["tmp"] / "repaired"
    _run([_auditwheel(), "repair", "--plat", tag.group(1), "-w", str(dest), built["wheel"]])
    (wheel,) = glob.glob(str(dest / "*.whl"))
    return wheel


@pytest.mark.slow
def test_wheel_in_fresh_venv_without_compiler(built):
    """Install the (repaired when possible) wheel into a fresh venv with CC=false and
    CXX=false, then import, compute, and find the headers from outside the source tree."""
    wheel = _repaired_wheel(built) or built["wheel"]
    if wheel != built["wheel"]:
        with zipfile.ZipFile(wheel) as whl:
            assert any(n.startswith("fastctc.libs/libgomp") for n in whl.namelist()), \
                "auditwheel repair did not graft the OpenMP runtime"
    venv = built["tmp"] / "venv"
    # --system-site-packages: NumPy comes from this interpreter, so nothing is downloaded;
    # fastctc itself is installed into the venv and the smoke test checks it is that copy.
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)])
    python = str(venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python"))
    env = _build_env(CC="false", CXX="false", PYTHONNOUSERSITE="1")
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--force-reinstall",
          "--no-cache-dir", "-q", wheel], cwd=str(built["tmp"]), env=env)
    cmd = [python, SMOKE, "--forbid-prefix", ROOT, "--expect-openmp", "yes"]
    if os.path.isfile(os.path.join(ROOT, "cuda", "ctc.cu")):
        cmd.append("--expect-cuda-source")
    out = _run(cmd, cwd=str(built["tmp"]), env=env).stdout
    assert "fastctc smoke test: OK" in out
    assert str(venv) in out  # imported from the venv, not the source tree
    if os.path.isfile(os.path.join(ROOT, "pyx", "fastctc", "__main__.py")):
        version = _run([python, "-m", "fastctc", "--version"], cwd=str(built["tmp"]), env=env).stdout
        assert fastctc.__version__ in version
    else:
        print("fastctc/__main__.py does not exist yet: `python -m fastctc --version` not checked")


@pytest.mark.slow
def test_no_openmp_build_is_serial_and_works(built, tmp_path):
    """FASTCTC_NO_OPENMP=1 builds a serial engine that still computes correctly."""
    env = _build_env(FASTCTC_NO_OPENMP="1")
    src = tmp_path / "src"  # a fresh copy: nothing left over from the OpenMP build
    with tarfile.open(built["sdist"]) as tar:
        tar.extractall(src)
    (src,) = glob.glob(str(src / "fastctc-*"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps",
          "--no-index", "--no-cache-dir", "-q", "-w", str(tmp_path / "wheel"), src],
         cwd=str(tmp_path), env=env)
    (wheel,) = glob.glob(str(tmp_path / "wheel" / "fastctc-*.whl"))
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as whl:
        whl.extractall(target)
    env = _build_env(PYTHONPATH=str(target), PYTHONNOUSERSITE="1", CC="false", CXX="false")
    out = _run([sys.executable, SMOKE, "--forbid-prefix", ROOT, "--expect-openmp", "no"],
               cwd=str(tmp_path), env=env).stdout
    assert "fastctc smoke test: OK" in out
    assert str(target) in out  # imported from the serial build


@pytest.mark.slow
@pytest.mark.skipif(os.name == "nt", reason="wraps the compiler in a POSIX shell script")
def test_require_openmp_stops_a_build_without_openmp(built, tmp_path):
    """FASTCTC_REQUIRE_OPENMP=1 turns 'this compiler has no OpenMP' into a build error
    (instead of a quietly serial wheel); setting both knobs is an error too."""
    import sysconfig

    real_cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    wrapper = tmp_path / "cc-without-openmp"
    wrapper.write_text('#!/bin/sh\n# a C compiler that rejects every OpenMP flag\n'
                       'for a in "$@"; do case "$a" in *openmp*) '
                       'echo "cc-without-openmp: no OpenMP here" >&2; exit 1;; esac; done\n'
                       f'exec {real_cc} "$@"\n')
    wrapper.chmod(0o755)
    cases = [dict(CC=str(wrapper), FASTCTC_REQUIRE_OPENMP="1"),
             dict(FASTCTC_NO_OPENMP="1", FASTCTC_REQUIRE_OPENMP="1")]
    for i, knobs in enumerate(cases):
        lib = tmp_path / f"lib{i}"
        proc = subprocess.run(
            [sys.executable, "setup.py", "build_ext", "--build-lib", str(lib),
             "--build-temp", str(tmp_path / f"temp{i}")],
            cwd=built["src"], env=_build_env(**knobs), capture_output=True, text=True, timeout=600)
        assert proc.returncode != 0, f"{knobs}: the build succeeded"
        assert "FASTCTC_REQUIRE_OPENMP" in proc.stdout + proc.stderr
        assert not glob.glob(str(lib / "**" / "*.so"), recursive=True)
