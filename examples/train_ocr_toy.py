"""Toy OCR: a small CRNN (conv layers + bidirectional GRU + CTC) learns to read digit strings
rendered with Pillow's default font, trained twice from the same seed: once with
torch.nn.CTCLoss and once with fastctc.torch.CTCLoss.  Both runs print their loss curve
and the greedy-decoding accuracy on held-out images; they agree, because fastctc's loss is
PyTorch's and its gradient after log_softmax is PyTorch's.

    python examples/train_ocr_toy.py            # full run, well under a minute on 2 CPU cores
    python examples/train_ocr_toy.py --quick    # a few steps (what tests/test_example_ocr.py runs)

Needs torch and Pillow (pip install pillow).
"""
from __future__ import annotations

import argparse
import time

import fastctc.torch as fct
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

HEIGHT, WIDTH = 16, 48        # image size; the model emits WIDTH // 2 frames
BLANK, N_CLASSES = 0, 11      # class 0 is blank, class d + 1 is digit d


def render(text: str, rng: np.random.Generator) -> np.ndarray:
    """One grey image of `text` in Pillow's default font, jittered and noisy, in [0, 1]."""
    font = ImageFont.load_default()
    img = Image.new("L", (WIDTH, HEIGHT), 0)
    width = ImageDraw.Draw(img).textlength(text, font=font)
    x = int(rng.integers(0, max(1, WIDTH - int(width)) + 1))
    y = int(rng.integers(0, 4))
    ImageDraw.Draw(img).text((x, y), text, fill=255, font=font)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return np.clip(arr + rng.normal(0, 0.1, arr.shape).astype(np.float32), 0, 1)


def make_dataset(n: int, seed: int):
    """n images of random digit strings (length 1..6): images (n, 1, H, W), targets (n, 6)
    padded with 0, target lengths (n,), and the strings."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 1, HEIGHT, WIDTH), np.float32)
    targets = np.zeros((n, 6), np.int64)
    lengths = np.zeros(n, np.int64)
    texts = []
    for i in range(n):
        L = int(rng.integers(1, 7))
        digits = rng.integers(0, 10, size=L)
        text = "".join(map(str, digits))
        images[i, 0] = render(text, rng)
        targets[i, :L] = digits + 1
        lengths[i] = L
        texts.append(text)
    return torch.from_numpy(images), torch.from_numpy(targets), torch.from_numpy(lengths), texts


class CRNN(torch.nn.Module):
    """conv -> pool (H/2, W/2) -> conv -> pool (H/2) -> column features -> BiGRU -> classes."""

    def __init__(self, hidden: int = 48):
        super().__init__()
        self.conv = torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d((2, 1)))
        self.rnn = torch.nn.GRU(16 * (HEIGHT // 4), hidden, bidirectional=True)
        self.out = torch.nn.Linear(2 * hidden, N_CLASSES)

    def forward(self, x):                                   # x: (N, 1, H, W)
        f = self.conv(x)                                    # (N, 32, H/4, W/2)
        f = f.flatten(1, 2).permute(2, 0, 1)                # (T = W/2, N, 16 * H/4)
        h, _ = self.rnn(f)
        return self.out(h).log_softmax(-1)                  # (T, N, C) log-probabilities


def greedy_decode(log_probs: torch.Tensor) -> list[str]:
    """Best path per column, repeats merged, blanks dropped."""
    best = log_probs.argmax(-1).T.tolist()                  # (N, T)
    out = []
    for path in best:
        chars, prev = [], None
        for c in path:
            if c != prev and c != BLANK:
                chars.append(str(c - 1))
            prev = c
        out.append("".join(chars))
    return out


def train(loss_fn, data, test, steps: int, batch: int, seed: int, log_every: int):
    """Trains a fresh model from `seed`; returns (loss curve, test accuracy, seconds)."""
    torch.manual_seed(seed)
    model = CRNN()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    images, targets, lengths, _ = data
    order = np.random.default_rng(seed).integers(0, images.shape[0], size=(steps, batch))
    curve = []
    t0 = time.perf_counter()
    for step in range(steps):
        idx = torch.from_numpy(order[step])
        log_probs = model(images[idx])
        T, N = log_probs.shape[:2]
        input_lengths = torch.full((N,), T, dtype=torch.int64)
        loss = loss_fn(log_probs, targets[idx], input_lengths, lengths[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % log_every == 0 or step == steps - 1:
            curve.append((step, float(loss.detach())))
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        decoded = greedy_decode(model(test[0]))
    accuracy = float(np.mean([d == t for d, t in zip(decoded, test[3])]))
    return curve, accuracy, seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400, help="optimisation steps per run")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--test-size", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (0: torch's default; 1 is fastest for this tiny model)")
    parser.add_argument("--quick", action="store_true",
                        help="shortened run (30 steps, small data sets) for tests and smoke checks")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.train_size, args.test_size = 30, 300, 60
    if args.threads:
        torch.set_num_threads(args.threads)
    data = make_dataset(args.train_size, args.seed)
    test = make_dataset(args.test_size, args.seed + 1)
    log_every = max(1, args.steps // 10)
    results = {}
    for name, loss_fn in (("torch.nn.CTCLoss", torch.nn.CTCLoss(blank=BLANK)),
                          ("fastctc.torch.CTCLoss", fct.CTCLoss(blank=BLANK))):
        curve, acc, seconds = train(loss_fn, data, test, args.steps, args.batch, args.seed, log_every)
        results[name] = {"curve": curve, "accuracy": acc, "seconds": seconds}
    names = list(results)
    print(f"{'step':>6}  {names[0]:>22}  {names[1]:>22}")
    for (step, a), (_, b) in zip(results[names[0]]["curve"], results[names[1]]["curve"]):
        print(f"{step:>6}  {a:>22.6f}  {b:>22.6f}")
    for name in names:
        r = results[name]
        print(f"{name}: greedy-decoding accuracy {r['accuracy']:.3f} on {args.test_size} test images "
              f"(training took {r['seconds']:.1f} s)")
    return results


if __name__ == "__main__":
    main()
