"""fastctc._validate: every check on user input, made before any kernel runs.

The compiled engine trusts what it is given (pointers, lengths, label values), so this
module is the only thing between a user's arrays and an out-of-bounds read.  Each check
raises one of the errors below, whose message names the argument, the offending index
and value, and the bound it broke.  The result of a successful check is a `Batch`: the
activations as a (T, N, C) view with a contiguous class axis (read in place whenever the
input allows it), the targets flattened to int32 with per-sequence offsets, and int32
lengths.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np

INT32_MAX = 2**31 - 1


class CTCValueError(ValueError):
    """A value or shape is out of range (a ValueError).

    Raised before any kernel runs.  The message names the argument, the offending index
    and value, and the bound it broke.

    Examples
    --------
    >>> import numpy as np
    >>> import fastctc
    >>> try:
    ...     fastctc.ctc_loss(np.zeros((2, 1, 3)), [[5]], [2], [1])   # label 5, but C = 3
    ... except fastctc.CTCValueError as exc:
    ...     print(isinstance(exc, ValueError), "targets" in str(exc))
    True True
    """


class CTCTypeError(TypeError):
    """An argument has the wrong type or dtype (a TypeError).

    Raised before any kernel runs; the message names the argument and the type or dtype
    it was given.
    """


class CTCRuntimeError(RuntimeError):
    """A run-time condition documented as RuntimeError by the API being matched.

    For example forced_align's "targets length is too long for CTC" (torchaudio raises
    RuntimeError there), or a CUDA tensor when the GPU path is unavailable.
    """


class CTCValueRuntimeError(CTCValueError, CTCRuntimeError):
    """A bad value or shape that the API being matched reports as RuntimeError.

    torch's and torchaudio's checks made in C++ raise RuntimeError; fastctc's front ends
    for them raise this class, so ``except ValueError`` and ``except RuntimeError`` both
    catch it.
    """


class CTCTypeRuntimeError(CTCTypeError, CTCRuntimeError):
    """A bad type or dtype that the API being matched reports as RuntimeError.

    ``except TypeError`` and ``except RuntimeError`` both catch it.
    """


def as_runtime_error(exc: Exception) -> Exception:
    """The same message as a class that is also a RuntimeError (for the checks a peer API
    makes in C++, which raise RuntimeError there)."""
    if isinstance(exc, RuntimeError):
        return exc
    cls = CTCTypeRuntimeError if isinstance(exc, TypeError) else CTCValueRuntimeError
    return cls(str(exc))


@dataclass
class Batch:
    acts: np.ndarray            # (T, N, C) float32/float64, acts.strides[2] == itemsize
    labels: np.ndarray          # flat int32 labels of every sequence, back to back
    offsets: np.ndarray         # (N,) intp: where sequence n's labels start in `labels`
    label_lengths: np.ndarray   # (N,) int32
    input_lengths: np.ndarray   # (N,) int32
    unbatched: bool             # the user passed (T, C)
    original_shape: tuple       # shape of the user's activations


def as_float_array(x, name: str) -> np.ndarray:
    """The activations as a float32/float64 ndarray (no copy when already one)."""
    if type(x).__module__.split(".")[0] == "torch" and hasattr(x, "detach"):
        # a CPU torch tensor (one that requires grad included): read its data in place;
        # np.asarray alone refuses tensors that require grad
        x = x.detach()
    try:
        arr = np.asarray(x)
    except Exception as exc:
        raise CTCTypeError(f"{name} could not be read as an array: {exc}") from exc
    if arr.dtype.kind != "f" or arr.dtype.itemsize not in (4, 8):
        raise CTCTypeError(f"{name} must have dtype float32 or float64, got {arr.dtype}")
    return arr


def _readable_in_place(arr: np.ndarray) -> bool:
    item = arr.itemsize
    return (arr.dtype.isnative and arr.flags.aligned and arr.strides[-1] == item
            and all(s % item == 0 for s in arr.strides))


def class_contiguous(arr: np.ndarray) -> np.ndarray:
    """arr itself when the engine can read it through strides, else one native copy."""
    if arr.size and not _readable_in_place(arr):
        # a fresh C-order copy: ascontiguousarray keeps an array NumPy already calls
        # contiguous, and for size-1 axes that includes strides such as (4, 4, -4)
        arr = np.array(arr, dtype=arr.dtype.newbyteorder("="), order="C", copy=True)
    elif not arr.dtype.isnative:  # empty, but the dtype should still be native
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def as_int_array(x, name: str) -> np.ndarray:
    """An integer ndarray (bool and float rejected); empty Python sequences are int64."""
    if isinstance(x, (list, tuple)) and len(x) == 0:
        return np.zeros(0, dtype=np.int64)
    try:
        arr = np.asarray(x)
    except Exception as exc:
        raise CTCTypeError(f"{name} could not be read as an integer array: {exc}") from exc
    check_integer_dtype(arr, name)
    return arr


def check_integer(value, name: str) -> int:
    """A Python or NumPy integer (bool rejected), as an int."""
    if isinstance(value, (bool, np.bool_)):
        raise CTCTypeError(f"{name} must be an integer, got bool {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise CTCTypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}") from None


def check_index(value, name: str, upper: int) -> int:
    """An integer in [0, upper)."""
    v = check_integer(value, name)
    if not 0 <= v < upper:
        raise CTCValueError(f"{name} must be in [0, {upper}), got {v}")
    return v


def check_flag(value, name: str) -> bool:
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer)) and value in (0, 1)):
        return bool(value)
    raise CTCTypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")


def check_reduction(reduction, type_error=CTCTypeError) -> str:
    """'none', 'mean' or 'sum'; type_error: the class for a reduction that is not a str
    (Paddle raises ValueError there)."""
    if not isinstance(reduction, str):
        raise type_error(f"reduction must be a str ('none', 'mean' or 'sum'), got {type(reduction).__name__}")
    if reduction not in ("none", "mean", "sum"):
        raise CTCValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    return reduction


def check_num_threads(num_threads):
    if num_threads is None:
        return None
    if isinstance(num_threads, (bool, np.bool_)):
        raise CTCTypeError("num_threads must be a positive integer or None, got a bool")
    try:
        v = operator.index(num_threads)
    except TypeError:
        raise CTCTypeError(f"num_threads must be a positive integer or None, got {num_threads!r}") from None
    if v < 1:
        raise CTCValueError(f"num_threads must be >= 1, got {v}")
    if v > INT32_MAX:  # the engine takes a C int
        raise CTCValueError(f"num_threads must be <= {INT32_MAX}, got {v}")
    return v


# ------------------------------------------------------------------ the checking vocabulary
# Every front end phrases its errors with these, so a message always has the same shape:
# the argument, the offending index and value, and the bound it broke.

def dtype_name(x) -> str:
    """'float32', 'int64', ... for the dtype of any array (NumPy, torch 'torch.float32',
    Paddle 'paddle.float32', CuPy, JAX, MindSpore 'Float32') or for a dtype itself."""
    dt = getattr(x, "dtype", x)
    if isinstance(dt, np.dtype):
        return str(dt)
    return str(dt).lower().replace("torch.", "").replace("paddle.", "")


def _alternatives(words) -> str:
    """'a', 'a or b', 'a, b or c'."""
    words = [str(w) for w in words]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def check_dtype(got, name: str, allowed, cls=CTCTypeError, why: str = "") -> str:
    """got (a dtype name, or anything dtype_name reads) among `allowed`; returns its name.
    why: who requires it ("as paddle.nn.functional.ctc_loss requires")."""
    kind = got if isinstance(got, str) else dtype_name(got)
    if kind not in allowed:
        raise cls(f"{name} must have dtype {_alternatives(allowed)}{' (' + why + ')' if why else ''}, got {kind}")
    return kind


def check_rank(shape, name: str, ranks, layout: str, cls=CTCValueError) -> tuple:
    """len(shape) among `ranks` (an int or a tuple of them); layout names the axes."""
    shape = tuple(shape)
    ranks = (ranks,) if isinstance(ranks, int) else tuple(ranks)
    if len(shape) not in ranks:
        raise cls(f"{name} must have rank {_alternatives(ranks)}, shape {layout}; got shape {shape}")
    return shape


def check_shape(shape, name: str, expected, layout: str, why: str = "", cls=CTCValueError) -> tuple:
    """shape == expected (a tuple); layout names the axes, why says where expected comes from."""
    shape = tuple(shape)
    if shape != tuple(expected):
        raise cls(f"{name} must have shape {layout} = {tuple(expected)}{' ' + why if why else ''}, "
                  f"got shape {shape}")
    return shape


def check_batch_size(shape, name: str, n: int, layout: str, letter: str = "N", why: str = "",
                     cls=CTCValueError) -> tuple:
    """shape[0] == n: the argument has the activations' batch size."""
    shape = tuple(shape)
    if not shape or shape[0] != n:
        raise cls(f"{name} must have shape {layout} with batch size {letter} = {n}{' ' + why if why else ''}, "
                  f"got shape {shape}")
    return shape


def check_at_least_one(size: int, name: str, what: str, letter: str, cls=CTCValueError) -> int:
    """An axis that must not be empty: `name must have at least one class (C >= 1), got C = 0`."""
    if size < 1:
        raise cls(f"{name} must have at least one {what} ({letter} >= 1), got {letter} = {size}")
    return size


def check_integer_dtype(x, name: str, cls=CTCTypeError):
    """x's dtype (NumPy's, or one NumPy can read: JAX, CuPy) holds integers (bool rejected)."""
    try:
        kind = np.dtype(getattr(x, "dtype", x)).kind
    except TypeError:
        kind = "?"
    if kind not in "iu":
        raise cls(f"{name} must hold integers, got dtype {getattr(x, 'dtype', x)}")


def first_offender(mask):
    """The index (a tuple, C order) of the first True element of a boolean array, or None."""
    mask = np.asarray(mask)
    if not mask.any():
        return None
    flat = int(np.flatnonzero(mask)[0])
    return tuple(int(k) for k in np.unravel_index(flat, mask.shape))


def index_text(idx) -> str:
    """'3' or '1, 2': an index as it is written inside name[...]."""
    return ", ".join(str(int(k)) for k in idx)


def check_range(arr, name: str, low, high, note: str = "", *, mask=None, exclusive: bool = False,
                cls=CTCValueError):
    """Every arr[i] (where mask[i], when given) in [low, high] ([low, high) when exclusive),
    else `name[i] = value is outside [low, bound] (note)` for the first offender.  high may
    be an array of per-item bounds; "{i}" in note is replaced by the offender's index."""
    arr = np.asarray(arr)
    if arr.size == 0:
        return
    bad = arr < low
    bad |= (arr >= high) if exclusive else (arr > high)
    if mask is not None:
        bad &= mask
    idx = first_offender(bad)
    if idx is None:
        return
    bound = int(np.asarray(high)[idx]) if np.ndim(high) else high
    i = index_text(idx)
    note = note.replace("{i}", i)
    raise cls(f"{name}[{i}] = {int(arr[idx])} is outside [{low}, {bound}{')' if exclusive else ']'}"
              f"{' (' + note + ')' if note else ''}")


def check_lengths(x, name: str, n: int, unbatched: bool = False) -> np.ndarray:
    """Lengths as an integer (n,) array, read by element count as PyTorch reads them (a
    (N, 1) or (1, N) tensor works); one value (or a scalar) for unbatched input."""
    arr = as_int_array(x, name)
    if unbatched:
        if arr.size != 1:
            raise CTCValueError(f"{name} must be a scalar (or hold one value) for unbatched (T, C) input, "
                                f"got shape {arr.shape}")
        return arr.reshape(1)
    if arr.size != n or (arr.ndim == 0 and n != 1):
        raise CTCValueError(f"{name} must have shape (N,) = ({n},), got shape {arr.shape}")
    return arr.reshape(n)


def padded_mask(lengths, width: int) -> np.ndarray:
    """(N, width) bool: True at the positions of padded rows that lie inside each length."""
    return np.arange(width)[None, :] < np.asarray(lengths)[:, None]


def label_offsets(lengths, with_end: bool = False) -> np.ndarray:
    """Where each sequence's labels start in the flat label array (intp (N,)), or with_end
    the N + 1 boundaries (the last one is the total)."""
    lengths = np.asarray(lengths)
    n = lengths.shape[0]
    out = np.zeros(n + 1, dtype=np.intp)
    if n:
        np.cumsum(lengths, out=out[1:])
    return out if with_end else out[:n]


def repeats(labels, lengths) -> np.ndarray:
    """(N,) int64: how many labels of each padded row, within its length, equal the one
    before; a target needs length + repeats frames (a blank separates repeated labels)."""
    labels = np.asarray(labels)
    if labels.shape[1] < 2:
        return np.zeros(labels.shape[0], np.int64)
    inside = padded_mask(lengths, labels.shape[1])[:, 1:]
    return ((labels[:, 1:] == labels[:, :-1]) & inside).sum(axis=1).astype(np.int64)


def check_ctc_inputs(log_probs, targets, input_lengths, target_lengths, blank,
                     acts_name: str = "log_probs", allow_unbatched: bool = True) -> tuple[Batch, int]:
    """Validates torch.nn.functional.ctc_loss-style arguments; returns (Batch, blank)."""
    acts = as_float_array(log_probs, acts_name)
    original_shape = acts.shape
    if allow_unbatched:
        check_rank(acts.shape, acts_name, (2, 3), "(T, N, C) or unbatched (T, C)")
    else:
        check_rank(acts.shape, acts_name, 3, "(T, N, C)")
    unbatched = acts.ndim == 2
    if unbatched:
        acts = acts[:, None, :]
    T, N, C = acts.shape
    for dim_name, dim in (("T", T), ("N", N), ("C", C)):
        if dim > INT32_MAX:
            raise CTCValueError(f"{acts_name} dimension {dim_name} = {dim} exceeds {INT32_MAX}")
    check_at_least_one(C, acts_name, "class", "C")
    blank = check_index(blank, "blank", C)

    tg = as_int_array(targets, "targets")
    il = check_lengths(input_lengths, "input_lengths", N, unbatched)
    tl = check_lengths(target_lengths, "target_lengths", N, unbatched)
    check_range(il, "input_lengths", 0, T, f"T = {T}")

    # Unbatched input is a batch of one, exactly as PyTorch treats it: 1-D targets are the
    # concatenated form (exactly target_length labels), 2-D targets are padded (1, S).
    if tg.ndim == 2:
        check_batch_size(tg.shape, "targets", N, "(N, S)")
        S = tg.shape[1]
        check_range(tl, "target_lengths", 0, S, f"the padded target width S = {S}")
        tl32 = tl.astype(np.int32)
        mask = padded_mask(tl32, S)
        check_range(tg, "targets", 0, C, "C = number of classes", mask=mask, exclusive=True)
        flat = tg[mask]
    elif tg.ndim == 1:
        check_range(tl, "target_lengths", 0, INT32_MAX // 2 - 8, "int32 range")
        total = int(tl.astype(np.int64).sum())
        if total != tg.shape[0]:
            if unbatched:
                raise CTCValueError(f"targets of unbatched (T, C) input must hold exactly target_lengths = "
                                    f"{total} values (1-D targets are the concatenated form, as in PyTorch; "
                                    f"pass (1, S) for padded targets), got {tg.shape[0]}")
            raise CTCValueError(f"concatenated targets must hold sum(target_lengths) = {total} values, "
                                f"got {tg.shape[0]}")
        flat = tg
        check_range(flat, "targets", 0, C, "C = number of classes", exclusive=True)
        tl32 = tl.astype(np.int32)
    else:
        check_rank(tg.shape, "targets", (2, 1), "(N, S) padded or (sum(target_lengths),) concatenated")

    labels = np.ascontiguousarray(flat, dtype=np.int32).reshape(-1)
    offsets = label_offsets(tl32)
    batch = Batch(
        acts=class_contiguous(acts),
        labels=labels,
        offsets=offsets,
        label_lengths=np.ascontiguousarray(tl32),
        input_lengths=np.ascontiguousarray(il, dtype=np.int32),
        unbatched=unbatched,
        original_shape=original_shape,
    )
    return batch, blank


def check_grad_out(grad_out, shape: tuple, dtype: np.dtype, acts_name: str, acts_views, others=()) -> np.ndarray:
    """grad_out, when given: a writeable NumPy array of the gradient's shape and dtype,
    with a contiguous class axis, that shares no memory with anything the engine reads:
    the activations (the engine reads a frame after writing its gradient row) and each
    (name, array) of `others` (targets, lengths: overwritten while being read, they would
    give wrong numbers or out-of-range labels)."""
    if not isinstance(grad_out, np.ndarray):
        raise CTCTypeError(f"grad_out must be a NumPy array (for a torch tensor, pass tensor.numpy()), "
                           f"got {type(grad_out).__name__}")
    if grad_out.shape != tuple(shape):
        raise CTCValueError(f"grad_out must have the shape of {acts_name}, {tuple(shape)}, got {grad_out.shape}")
    if grad_out.dtype != dtype:
        raise CTCTypeError(f"grad_out must have the dtype of {acts_name}, {dtype}, got {grad_out.dtype}")
    if not grad_out.flags.writeable:
        raise CTCValueError("grad_out is read-only")
    if grad_out.size and not _readable_in_place(grad_out):   # the engine's own layout rule
        raise CTCValueError(f"grad_out must be aligned, in native byte order and contiguous along its last "
                            f"(class) axis; its strides are {grad_out.strides} for itemsize {grad_out.itemsize}")
    for other in acts_views:
        if grad_out.size and np.may_share_memory(grad_out, other):
            raise CTCValueError(f"grad_out shares memory with {acts_name}: the gradient cannot be written "
                                f"in place of its input")
    for name, other in others:
        if grad_out.size and isinstance(other, np.ndarray) and other.size and np.may_share_memory(grad_out, other):
            raise CTCValueError(f"grad_out shares memory with {name}: the engine reads {name} while it "
                                f"writes the gradient; pass a separate buffer")
    return grad_out


def check_call_options(reduction, zero_infinity, from_logits, num_threads):
    """The options every loss call takes, checked (reduction, zero_infinity, from_logits,
    num_threads); the common values pass with a type test each, anything else goes
    through its checker, which returns it normalised or raises the documented error."""
    if type(reduction) is not str or reduction not in ("none", "mean", "sum"):
        reduction = check_reduction(reduction)
    if type(zero_infinity) is not bool:
        zero_infinity = check_flag(zero_infinity, "zero_infinity")
    if type(from_logits) is not bool:
        from_logits = check_flag(from_logits, "from_logits")
    if num_threads is not None:
        num_threads = check_num_threads(num_threads)
    return reduction, zero_infinity, from_logits, num_threads
