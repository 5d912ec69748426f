"""Renders text with PIL into input arrays (.npy) for the PP-OCR models, for
`nerp eval --inputs` (docs/results/real-models.md):

  rec.npy  [8, 3, 48, 320]  text lines, PP-OCR recognizer preprocessing ((x/255 - 0.5)/0.5,
                            height 48, width by aspect ratio, zero padded to 320)
  cls.npy  [8, 3, 48, 192]  the same lines, every second one rotated 180° (direction classifier)
  cls_labels.txt            0 upright / 1 rotated, one per line of cls.npy
  det.npy  [1, 3, 480, 480] a page of dark text on light paper, ImageNet mean/std

Needs numpy and pillow (e.g. python3 -m venv v && v/bin/pip install numpy pillow) and a TrueType
font (DejaVu Sans by default, Debian package fonts-dejavu-core; or pass --font).
Run: python3 tools/make_ocr_inputs.py OUT_DIR
"""
import argparse
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LINES = [
    "Neural networks as small predictors",
    "invoice total 1,284.50 EUR",
    "The quick brown fox jumps",
    "Hello world 2026",
    "OPEN 9:00 - 17:30",
    "compress weights, keep accuracy",
    "Station Road 42",
    "pip install rapidocr",
]


def line_image(text, font):
    left, top, right, bottom = font.getbbox(text)
    img = Image.new("RGB", (right - left + 16, bottom - top + 16), (250, 250, 245))
    ImageDraw.Draw(img).text((8 - left, 8 - top), text, font=font, fill=(20, 20, 30))
    return img


def rec_tensor(img, width):
    h = 48
    w = min(width, int(np.ceil(h * img.width / img.height)))
    x = np.asarray(img.resize((w, h), Image.BILINEAR), dtype=np.float32) / 255.0
    x = (x - 0.5) / 0.5
    out = np.zeros((3, h, width), dtype=np.float32)
    out[:, :, :w] = x.transpose(2, 0, 1)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--font", default="/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    font = ImageFont.truetype(a.font, 32)
    lines = [line_image(t, font) for t in LINES]
    np.save(os.path.join(a.out, "rec.npy"), np.stack([rec_tensor(i, 320) for i in lines]))
    rotated = [i.rotate(180) if k % 2 else i for k, i in enumerate(lines)]
    np.save(os.path.join(a.out, "cls.npy"), np.stack([rec_tensor(i, 192) for i in rotated]))
    with open(os.path.join(a.out, "cls_labels.txt"), "w") as f:
        f.write("".join(f"{k % 2}\n" for k in range(len(lines))))
    page = Image.new("RGB", (480, 480), (245, 243, 235))
    draw = ImageDraw.Draw(page)
    small = ImageFont.truetype(a.font, 22)
    for k, t in enumerate(LINES):
        draw.text((20 + 10 * (k % 3), 20 + 55 * k), t, font=small, fill=(25, 25, 35))
    x = np.asarray(page, dtype=np.float32) / 255.0
    x = (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.save(os.path.join(a.out, "det.npy"), x.transpose(2, 0, 1)[None].astype(np.float32))
    page.save(os.path.join(a.out, "det.png"))
    print("wrote", a.out)


if __name__ == "__main__":
    main()
