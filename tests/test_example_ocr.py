"""examples/train_ocr_toy.py, shortened (--quick): the torch.nn.CTCLoss and
fastctc.torch.CTCLoss runs from the same seed must give the same loss curve (to float32
rounding drift) and the same greedy-decoding accuracy, and training must reduce the loss."""
import importlib.util
import os

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("PIL")

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "train_ocr_toy.py")


def test_quick_run_agrees(capsys):
    spec = importlib.util.spec_from_file_location("train_ocr_toy", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    results = mod.main(["--quick"])
    out = capsys.readouterr().out
    assert "torch.nn.CTCLoss" in out and "fastctc.torch.CTCLoss" in out and "accuracy" in out
    ours, theirs = results["fastctc.torch.CTCLoss"], results["torch.nn.CTCLoss"]
    steps_a, loss_a = zip(*theirs["curve"])
    steps_b, loss_b = zip(*ours["curve"])
    assert steps_a == steps_b and len(steps_a) >= 5
    np.testing.assert_allclose(loss_b[0], loss_a[0], rtol=1e-6)   # same model, same batch
    np.testing.assert_allclose(loss_b, loss_a, rtol=1e-3)
    assert loss_a[-1] < 0.5 * loss_a[0]
    assert abs(ours["accuracy"] - theirs["accuracy"]) <= 0.05
