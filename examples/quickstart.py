"""Quickstart: the CTC loss and gradient of a published reference problem (Graves'
TensorFlow test vectors), the loss checked against its published values and the
gradient against central finite differences of the loss, with fastctc's NumPy API.

    python examples/quickstart.py
"""
import numpy as np

import fastctc

# Graves' test vectors (TensorFlow ctc_loss_op_test): 2 sequences, T=5, C=6, blank=5.
probs = np.array([
    [[0.633766, 0.221185, 0.0917319, 0.0129757, 0.0142857, 0.0260553],
     [0.111121, 0.588392, 0.278779, 0.0055756, 0.00569609, 0.010436],
     [0.0357786, 0.633813, 0.321418, 0.00249248, 0.00272882, 0.0037688],
     [0.0663296, 0.643849, 0.280111, 0.00283995, 0.0035545, 0.00331533],
     [0.458235, 0.396634, 0.123377, 0.00648837, 0.00903441, 0.00623107]],
    [[0.30176, 0.28562, 0.0831517, 0.0862751, 0.0816851, 0.161508],
     [0.24082, 0.397533, 0.0557226, 0.0546814, 0.0557528, 0.19549],
     [0.230246, 0.450868, 0.0389607, 0.038309, 0.0391602, 0.202456],
     [0.280884, 0.429522, 0.0326593, 0.0339046, 0.0326856, 0.190345],
     [0.423286, 0.315517, 0.0338439, 0.0393744, 0.0339315, 0.154046]]])
log_probs = np.log(probs).transpose(1, 0, 2).astype(np.float32)  # (T, N, C)
targets = np.array([[0, 1, 2, 1, 0], [0, 1, 1, 0, 0]])
loss, grad = fastctc.ctc_loss_and_grad(log_probs, targets, [5, 5], [5, 4], blank=5, reduction="none")
print("Graves vectors: loss =", loss, "(published: 3.34211, 5.42262)")
print("d loss / d log_probs at t=0, sequence 0:", np.round(grad[0, 0], 5))
assert np.allclose(loss, [3.34211, 5.42262], rtol=1e-5)

# The gradient, checked: central differences of the (float64) loss in every cell.
lp64 = log_probs.astype(np.float64)
_, grad64 = fastctc.ctc_loss_and_grad(lp64, targets, [5, 5], [5, 4], blank=5, reduction="sum")
numeric = np.zeros_like(lp64)
eps = 1e-6
for index in np.ndindex(*lp64.shape):
    up, down = lp64.copy(), lp64.copy()
    up[index] += eps
    down[index] -= eps
    numeric[index] = (fastctc.ctc_loss(up, targets, [5, 5], [5, 4], blank=5, reduction="sum")
                      - fastctc.ctc_loss(down, targets, [5, 5], [5, 4], blank=5, reduction="sum")) / (2 * eps)
err = np.abs(numeric - grad64).max()
print(f"gradient vs finite differences: max abs difference {err:.2e} over {numeric.size} cells")
assert err < 1e-6

print(fastctc.info())
