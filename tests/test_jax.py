"""fastctc.jax.ctc_loss against optax.ctc_loss: values and gradients (float32 and float64),
under jax.jit, jax.vmap (including a vmapped log_epsilon) and jax.grad; the gradient must
come from fastctc's kernel (a host callback), not from autodiff through a scan."""
import functools

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
jnp = jax.numpy

import fastctc.jax as fj  # noqa: E402
from test_optax import make_case  # noqa: E402


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


def test_gradient_comes_from_the_kernel_not_a_scan():
    case = [jnp.asarray(a) for a in make_case(3)]
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda x: fj.ctc_loss(x, *case[1:]).sum()))(case[0]))
    assert "pure_callback" in jaxpr
    assert "scan" not in jaxpr and "while" not in jaxpr


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
    """Regression: `with jax.enable_x64(True)` is thread-local and JAX may run the host
    callback on another thread, which narrowed float64 to float32 ("Incorrect output
    dtype").  float64 now crosses the callback as uint32 pairs, bit for bit."""
    for i in range(12):
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
