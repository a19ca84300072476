"""fastctc.jax.ctc_loss against optax.ctc_loss: values and gradients (float32 and float64),
under jax.jit, jax.vmap (including a vmapped log_epsilon) and jax.grad; the loss and the
gradient must come from fastctc's XLA FFI custom call (one call, also under vmap), not from a
host callback or autodiff through a scan; the hand-written FFI declarations are checked
against jaxlib's own C header."""
import functools

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
jnp = jax.numpy

import fastctc  # noqa: E402
import fastctc.jax as fj  # noqa: E402
from conftest import C_COMPILERS, needs_cc  # noqa: E402
from test_optax import make_case, random_optax_case  # noqa: E402


def _weighted(fn, blank=0, eps=-1e5):
    def loss(x, *rest):
        return (fn(x, *rest, blank_id=blank, log_epsilon=eps) * jnp.linspace(0.5, 1.5, x.shape[0])).sum()
    return loss


@functools.partial(jax.jit, static_argnames=("blank",))
def _optax_value_and_grad(x, fp, lab, lp, eps, blank):
    return jax.value_and_grad(_weighted(optax.ctc_loss, blank, eps))(x, fp, lab, lp)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", [0, 1])
def test_value_and_grad_match_optax_under_jit(dtype, seed):
    blank, eps = seed, (-1e5 if seed == 0 else -7.0)
    with jax.enable_x64(dtype == np.float64):
        case = [jnp.asarray(a) for a in make_case(seed, dtype=dtype, blank=blank)]
        want_loss, want_grad = _optax_value_and_grad(*case, jnp.asarray(eps, dtype), blank)
        ours = jax.jit(jax.value_and_grad(_weighted(fj.ctc_loss, blank, eps)))
        loss, grad = ours(*case)
        plain = fj.ctc_loss(*case, blank_id=blank, log_epsilon=eps)
        assert plain.dtype == dtype and grad.dtype == dtype
        np.testing.assert_allclose(plain, optax.ctc_loss(*case, blank_id=blank, log_epsilon=eps),
                                   rtol=2e-5 if dtype == np.float32 else 1e-12)
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(loss, want_loss, **tol)
    np.testing.assert_allclose(grad, want_grad, **tol)


def test_vmap_and_vmap_of_grad():
    case = [jnp.asarray(a) for a in make_case(2)]
    stacked = [jnp.stack([c, c, c]) for c in case]
    stacked[0] = stacked[0] * jnp.array([1.0, 0.5, -2.0])[:, None, None, None]
    stacked[1] = stacked[1].at[2, 0, 4].set(1.0)  # a padded frame in one mapped copy only
    want = jax.jit(jax.vmap(optax.ctc_loss))(*stacked)
    got = jax.jit(jax.vmap(fj.ctc_loss))(*stacked)
    np.testing.assert_allclose(got, want, rtol=2e-5)
    grad_of = lambda fn: jax.vmap(jax.grad(lambda x, *r: fn(x, *r).sum()))  # noqa: E731
    np.testing.assert_allclose(jax.jit(grad_of(fj.ctc_loss))(*stacked), jax.jit(grad_of(optax.ctc_loss))(*stacked),
                               rtol=2e-5, atol=2e-5)
    # log_epsilon mapped too (different per mapped call)
    eps = jnp.array([-1e5, -4.0])
    got = jax.vmap(lambda e: fj.ctc_loss(*case, log_epsilon=e))(eps)
    want = jax.jit(jax.vmap(lambda e: optax.ctc_loss(*case, log_epsilon=e)))(eps)
    np.testing.assert_allclose(got, want, rtol=2e-5)


def test_gradient_comes_from_the_ffi_call_not_a_callback_or_scan():
    case = [jnp.asarray(a) for a in make_case(3)]
    fn = jax.grad(lambda x: fj.ctc_loss(x, *case[1:]).sum())
    jaxpr = str(jax.make_jaxpr(fn)(case[0]))
    assert "ffi_call" in jaxpr and "fastctc_optax_ctc" in jaxpr
    assert "callback" not in jaxpr and "scan" not in jaxpr and "while" not in jaxpr
    hlo = jax.jit(fn).lower(case[0]).as_text()
    assert hlo.count('custom_call_target="fastctc_optax_ctc"') + hlo.count("@fastctc_optax_ctc") == 1
    assert "callback" not in hlo


def test_vmap_is_one_call_over_the_mapped_batch():
    case = [jnp.asarray(a) for a in make_case(2)]
    stacked = [jnp.stack([c] * 3) for c in case]
    hlo = jax.jit(jax.vmap(fj.ctc_loss)).lower(*stacked).as_text()
    assert hlo.count("fastctc_optax_ctc") == 1 and "3x5x10x6" in hlo


def test_ffi_handler_reports_bad_operands_as_errors():
    """The handler checks what it is given (a Python exception, never a crash), even when
    called directly with operands fastctc.jax would never pass."""
    x = jnp.zeros((2, 5, 4), jnp.float32)
    fp = jnp.zeros((2, 5), jnp.float32)
    lab = jnp.ones((2, 3), jnp.float32)  # float labels
    lp = jnp.zeros((2, 3), jnp.float32)
    call = jax.ffi.ffi_call("fastctc_optax_ctc", jax.ShapeDtypeStruct((2,), jnp.float32))
    with pytest.raises(Exception, match="labels s32"):
        jax.block_until_ready(call(x, fp, lab, lp, jnp.float32(-1e5), blank=np.int64(0), num_threads=np.int64(0)))
    with pytest.raises(Exception, match="blank"):
        jax.block_until_ready(call(x, fp, lab.astype(jnp.int32), lp, jnp.float32(-1e5), blank=np.int64(7),
                                   num_threads=np.int64(0)))
    with pytest.raises(Exception, match="shapes"):
        jax.block_until_ready(call(x, fp[:, :4], lab.astype(jnp.int32), lp, jnp.float32(-1e5), blank=np.int64(0),
                                   num_threads=np.int64(0)))


@needs_cc
def test_hand_written_ffi_declarations_match_jaxlib_header(tmp_path):
    """pyx/fastctc/_xla_ffi.h declares XLA's FFI structs by hand (no jax needed to build);
    tests/c/xla_ffi_abi.c static-asserts every offset and size against jaxlib's c_api.h."""
    import os
    import subprocess
    inc = jax.ffi.include_dir()
    if not os.path.exists(os.path.join(inc, "xla", "ffi", "api", "c_api.h")):
        pytest.skip(f"jaxlib ships no xla/ffi/api/c_api.h under {inc}")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [C_COMPILERS[0], "-std=c11", "-Wall", "-Werror", "-fsyntax-only", f"-I{inc}",
           f"-I{os.path.join(root, 'include')}", f"-I{os.path.join(root, 'pyx', 'fastctc')}",
           os.path.join(root, "tests", "c", "xla_ffi_abi.c")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_engine_speed_path_matches_optax_on_a_realistic_batch():
    """float32, log_epsilon = -1e5, every sequence feasible (the engine's route), padded
    frames at the end and in the middle: loss within 1e-5 relative of optax, gradient close."""
    rng = np.random.default_rng(5)
    B, T, K, N = 6, 40, 12, 8
    x = jnp.asarray(rng.normal(size=(B, T, K)).astype(np.float32) * 3)
    fp = np.zeros((B, T), np.float32)
    fp[1, 30:] = 1
    fp[2, [5, 6, 20]] = 1
    fp[3, :4] = 1
    lab = jnp.asarray(rng.integers(1, K, size=(B, N)).astype(np.int32))
    lp = np.zeros((B, N), np.float32)
    lp[4, 5:] = 1
    fn = lambda f: jax.jit(jax.value_and_grad(lambda v: f(v, fp, lab, lp).sum()))  # noqa: E731
    (l1, g1), (l2, g2) = fn(fj.ctc_loss)(x), fn(optax.ctc_loss)(x)
    np.testing.assert_allclose(fj.ctc_loss(x, fp, lab, lp), optax.ctc_loss(x, fp, lab, lp), rtol=1e-5)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    np.testing.assert_allclose(g1, g2, rtol=1e-4, atol=1e-5)
    assert not np.any(np.asarray(g1)[2, [5, 6, 20]]) and not np.any(np.asarray(g1)[3, :4])


def test_padding_cotangents_are_zero_and_errors():
    case = [jnp.asarray(a) for a in make_case(4)]
    g = jax.grad(lambda fp: fj.ctc_loss(case[0], fp, case[2], case[3]).sum())(case[1])
    assert g.shape == case[1].shape and not np.any(np.asarray(g))
    with pytest.raises(ValueError, match="blank_id"):
        fj.ctc_loss(*case, blank_id=99)
    with pytest.raises(ValueError, match="rank 3"):
        fj.ctc_loss(case[0][0], *case[1:])
    with pytest.raises(ValueError, match="logit_paddings"):
        fj.ctc_loss(case[0], case[1][:, 1:], *case[2:])
    with pytest.raises(TypeError, match="labels"):
        fj.ctc_loss(case[0], case[1], case[2].astype(jnp.float32), case[3])


def test_float64_under_thread_local_enable_x64():
    """`with jax.enable_x64(True)` is thread-local: float64 must stay float64 through the
    custom call whichever thread runs it (a host-callback version once narrowed it)."""
    for i in range(4):
        dtype = np.float64 if i % 2 == 0 else np.float32
        rng = np.random.default_rng(i)
        with jax.enable_x64(dtype == np.float64):
            x = jnp.asarray(rng.normal(size=(3, 12, 6)).astype(dtype))
            fp = jnp.zeros((3, 12), dtype)
            lab = jnp.asarray(rng.integers(1, 6, size=(3, 4)))
            lp = jnp.zeros((3, 4), dtype)
            loss, grad = jax.jit(jax.value_and_grad(lambda v: fj.ctc_loss(v, fp, lab, lp).sum()))(x)
            want = optax.ctc_loss(x, fp, lab, lp).sum()
            assert grad.dtype == dtype and loss.dtype == dtype
            np.testing.assert_allclose(loss, want, rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_vmap_matches_a_loop_of_numpy_calls(jax_x64):
    """Mapped log_epsilon and different cases per mapped call, float64, against the NumPy API."""
    import fastctc.jax as fj
    jnp = jax_x64.numpy
    rng = np.random.default_rng(5)
    cases = [random_optax_case(rng, 2, 6, 4, 3, np.float64) for _ in range(3)]
    stack = [jnp.asarray(np.stack([c[k] for c in cases])) for k in range(4)]
    eps = jnp.asarray([c[5] for c in cases])
    fn = jax_x64.jit(jax_x64.vmap(lambda x, fp, lab, lp, e: fj.ctc_loss(x, fp, lab, lp, blank_id=1, log_epsilon=e)))
    got = fn(*stack, eps)
    for m, c in enumerate(cases):
        np.testing.assert_allclose(got[m], fastctc.optax_ctc_loss(*c[:4], blank_id=1, log_epsilon=c[5]),
                                   rtol=1e-12)
