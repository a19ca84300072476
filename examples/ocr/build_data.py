"""Builds examples/ocr/: a small CTC scoring set from a real OCR model.

Renders short English text lines with Pillow and the DejaVu Sans font, runs PP-OCRv4's
text recogniser (the ONNX model shipped inside the rapidocr-onnxruntime 1.4.4 wheel) on
each line, and writes

    emissions.npz   one float32 (T, C) array of log-probabilities per line, key = item id
    vocab.txt       one symbol per line; line 0 is the CTC blank, line i is class i
    manifest.jsonl  {"id", "emissions": "emissions.npz:<id>", "text"} per line

Some manifest transcripts are deliberately wrong (a changed letter, a swapped word, a
missing word, another line's text) so that `fastctc score` has something to flag; the
true text of every line is kept in truth.jsonl with a `wrong` flag.

Size: the recogniser has 6625 classes; keeping all of them would make the committed data
tens of megabytes.  We keep only the classes the rendered lines use (plus the blank) and
renormalise each frame over the kept classes (a log-softmax over the kept columns), i.e.
the emissions are the model's distribution conditioned on "the symbol is one of these".
That is what the README says the scores mean.

Needs: pip install rapidocr-onnxruntime==1.4.4 onnxruntime pillow, and DejaVuSans.ttf
(Debian: apt-get install fonts-dejavu-core; or pass --font).
Run:   python examples/ocr/build_data.py            (writes next to this script)
"""
import argparse
import json
import os
import sys

import numpy as np

LINES = [
    "The quick brown fox jumps over the lazy dog.",
    "Connectionist temporal classification",
    "Invoice number 40213, due 12 March 2024",
    "Total amount: 1,284.50 EUR",
    "Please keep this receipt for your records.",
    "Open Monday to Friday, 9am to 5pm",
    "Platform 4: trains to Cambridge",
    "No parking in front of the gate",
    "Best before 03/11/2025",
    "Speech and handwriting recognition",
    "All rights reserved.",
    "Chapter 7. The forward-backward algorithm",
    "Room 214, second floor",
    "Fresh bread baked every morning",
    "Warning: high voltage",
    "Order #88312 has been shipped",
    "Call us at +44 20 7946 0958",
    "Emergency exit only",
    "Batteries not included",
    "Thank you for shopping with us!",
    "Mind the gap",
    "Version 2.4.1 release notes",
    "Temperature: 21.5 C, humidity 40%",
    "Keep out of reach of children",
    "Library opening hours extended",
    "The meeting starts at half past ten",
    "Handle with care - fragile",
    "Alignment of frames to tokens",
    "Flight BA 117 to New York",
    "Serial number QX-5521-B",
    "Do not feed the animals",
    "Welcome to the conference",
    "Dynamic programming over a lattice",
    "Wet paint, do not touch",
    "Ticket valid for one journey",
    "Lost and found office",
    "Milk, eggs, flour and sugar",
    "Model trained on 10,000 hours",
    "Press the green button to start",
    "Quiet zone: no phone calls",
]

# id index -> wrong transcript written to the manifest instead of the true text
WRONG = {
    2: "Invoice number 40218, due 12 March 2024",          # one digit changed
    5: "Open Monday to Friday, 9am to 6pm",                 # one digit changed
    9: "Speech and handwritten recognition",                # one word changed
    16: "Call us at +44 20 7946",                           # tail missing
    21: "Version 2.4.1 release note",                       # one letter missing
    28: "Flight BA 117 to Los Angeles",                     # words replaced
    33: "Do not touch, wet paint",                          # words reordered
    36: "Mind the gap",                                     # another line's text
}


def find_font(explicit):
    candidates = [explicit] if explicit else []
    candidates += ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                   "/usr/share/fonts/dejavu/DejaVuSans.ttf",
                   "/Library/Fonts/DejaVuSans.ttf"]
    for path in candidates:
        if path and os.path.isfile(path):
            return path
    sys.exit("DejaVuSans.ttf not found: apt-get install fonts-dejavu-core, or pass --font PATH")


def render(text, font, height=48):
    """Black text on white, height `height`, width following the text (RGB uint8)."""
    from PIL import Image, ImageDraw
    left, top, right, bottom = font.getbbox(text)
    pad = 8
    img = Image.new("RGB", (right - left + 2 * pad, bottom - top + 2 * pad), "white")
    ImageDraw.Draw(img).text((pad - left, pad - top), text, fill="black", font=font)
    width = max(8, int(round(img.width * height / img.height)))
    return np.asarray(img.resize((width, height), Image.BICUBIC))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--font", default=None)
    args = ap.parse_args(argv)

    import onnxruntime as ort
    import rapidocr_onnxruntime
    from PIL import ImageFont

    model = os.path.join(os.path.dirname(rapidocr_onnxruntime.__file__), "models",
                         "ch_PP-OCRv4_rec_infer.onnx")
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    # The character list is stored in the model's metadata; PaddleOCR's decoder puts the
    # CTC blank at class 0 and appends a space as the last class.
    chars = session.get_modelmeta().custom_metadata_map["character"].splitlines()
    classes = ["<blank>"] + chars + [" "]
    index = {c: i for i, c in enumerate(classes) if i > 0}

    font = ImageFont.truetype(find_font(args.font), 40)
    used = sorted({ch for line in LINES + list(WRONG.values()) for ch in line}, key=lambda c: index[c])
    keep = [0] + [index[c] for c in used]
    vocab = ["<blank>"] + used

    arrays, manifest, truth, decoded_ok = {}, [], [], 0
    input_name = session.get_inputs()[0].name
    for i, line in enumerate(LINES):
        img = render(line, font).astype(np.float32)
        x = ((img / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)[None]     # (1, 3, 48, W)
        probs = session.run(None, {input_name: x})[0][0]             # (T, 6625) softmax
        greedy = probs.argmax(-1)
        text = "".join(classes[k] for j, k in enumerate(greedy)
                       if k != 0 and (j == 0 or k != greedy[j - 1]))
        decoded_ok += text == line
        # restrict to the kept classes and renormalise in log space
        sub = np.log(np.maximum(probs[:, keep].astype(np.float64), 1e-30))
        sub -= np.logaddexp.reduce(sub, axis=1, keepdims=True)
        item = f"line{i:03d}"
        arrays[item] = sub.astype(np.float32)
        wrong = i in WRONG
        manifest.append({"id": item, "emissions": f"emissions.npz:{item}",
                         "text": WRONG.get(i, line)})
        truth.append({"id": item, "text": line, "greedy": text, "wrong": wrong})
        print(f"{item} T={probs.shape[0]:3d} greedy={text!r}{'  (manifest text is wrong)' if wrong else ''}")

    os.makedirs(args.out, exist_ok=True)
    np.savez_compressed(os.path.join(args.out, "emissions.npz"), **arrays)
    with open(os.path.join(args.out, "vocab.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(s + "\n" for s in vocab))
    for name, rows in (("manifest.jsonl", manifest), ("truth.jsonl", truth)):
        with open(os.path.join(args.out, name), "w", encoding="utf-8", newline="\n") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"{len(LINES)} lines, {len(WRONG)} wrong transcripts, {len(vocab)} classes kept of "
          f"{len(classes)}; greedy decode matches the true text on {decoded_ok}/{len(LINES)} lines")


if __name__ == "__main__":
    main()
