"""Renders text with PIL into input arrays (.npy) for the PP-OCR models, for
`nerp eval --inputs` (docs/results/real-models.md):

  rec.npy  [8, 3, 48, 320]  text lines, PP-OCR recognizer preprocessing ((x/255 - 0.5)/0.5,
                            height 48, width by aspect ratio, zero padded to 320)
  cls.npy  [8, 3, 48, 192]  the same lines, every second one rotated 180° (direction classifier)
  cls_labels.txt            0 upright / 1 rotated, one per line of cls.npy
  det.npy  [1, 3, 480, 480] a page of dark text on light paper, ImageNet mean/std

and, for calibrating on some inputs and evaluating on others (docs/results/real_budget.md), two
disjoint sets: 32 other lines to calibrate on (`compress` fits to three quarters of them and
checks the file on the rest) and 24 to evaluate on (the 8 above and 16 more), in four DejaVu
faces (Sans, Serif, Mono, Sans Bold) and three sizes:

  rec_cal.npy [32, 3, 48, 320]   rec_eval.npy [24, 3, 48, 320]
  cls_cal.npy [32, 3, 48, 192]   cls_eval.npy [24, 3, 48, 192]   (every second line rotated)
  det_cal.npy, det_eval.npy [8, 3, 480, 480]  pages of 16 calibration / evaluation lines each,
                                              each page in another face, size, line order

Needs numpy and pillow (e.g. python3 -m venv v && v/bin/pip install numpy pillow) and a TrueType
font (DejaVu Sans by default, Debian package fonts-dejavu-core; or pass --font; the split sets
use the other faces of the font's folder when they are there).
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

# Text for the calibration set; the evaluation set is LINES and MORE.
CALIBRATION = [
    "Total due on delivery: 56.20",
    "Platform 3 departs at 08:15",
    "Keep refrigerated below 5 C",
    "Meeting room B, second floor",
    "Order number 771-20935",
    "Fresh bread every morning",
    "Exit only - no entry",
    "Batteries not included",
    "Phone +44 20 7946 0018",
    "Open source, open data",
    "Chapter 7: The long winter",
    "Parking for customers only",
    "Best before 12 MAR 2027",
    "Turn left at the library",
    "Price per kg 3.49",
    "Welcome to Riverside Park",
    "Staff only beyond this point",
    "Ticket valid for 2 zones",
    "Lot 5 - 250 g - 1.99",
    "Emergency exit, keep clear",
    "Tuesday 14 October",
    "Library returns box",
    "Call 0800 123 456 now",
    "Hand wash only at 30 C",
    "Platform 9 and a half",
    "Free wifi: guest / 2468",
    "Mind the step",
    "Invoice 2026-0117 paid",
    "Dogs must be kept on a lead",
    "Bakery open until 6 pm",
    "Recycling: paper and glass",
    "Section C, row 12, seat 7",
]
MORE = [
    "Please close the gate",
    "Flight LH 2041 to Munich",
    "Serial no. QX-5530-B",
    "Coffee, tea and cake",
    "Do not lean on the door",
    "Gate closes 20 min before",
    "Volume 12, issue 4",
    "Receipt 00412 cash 20.00",
    "Room 214 - Dr. Alvarez",
    "Lift out of order",
    "New opening hours from May",
    "Quiet zone: phones off",
    "Sale: everything -30%",
    "Museum of Modern Art",
    "Wet paint, do not touch",
    "Bus 47 to Central Station",
]
FACES = ["DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Bold.ttf"]


def fonts(path):
    """The faces of FACES found beside `path` (else `path` alone), at three sizes."""
    folder = os.path.dirname(path)
    found = [os.path.join(folder, f) for f in FACES if os.path.exists(os.path.join(folder, f))]
    return [ImageFont.truetype(f, size) for size in (30, 34, 28) for f in (found or [path])]


def render_page(texts, path, size, shift=0):
    """A 480x480 page of `texts`, dark on light paper, ImageNet mean/std, and its image;
    `shift` moves the lines' indents."""
    img = Image.new("RGB", (480, 480), (245, 243, 235))
    draw = ImageDraw.Draw(img)
    font = ImageFont.truetype(path, size)
    step = 460 // len(texts)
    for k, t in enumerate(texts):
        draw.text((20 + 10 * ((k + shift) % 3), 12 + step * k), t, font=font, fill=(25, 25, 35))
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    return x.transpose(2, 0, 1)[None].astype(np.float32), img


def save_lines(out, name, images):
    """rec/cls arrays of `images` (cls: every second one rotated 180 degrees)."""
    np.save(os.path.join(out, f"rec{name}.npy"), np.stack([rec_tensor(i, 320) for i in images]))
    rotated = [i.rotate(180) if k % 2 else i for k, i in enumerate(images)]
    np.save(os.path.join(out, f"cls{name}.npy"), np.stack([rec_tensor(i, 192) for i in rotated]))


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
    save_lines(a.out, "", lines)
    with open(os.path.join(a.out, "cls_labels.txt"), "w") as f:
        f.write("".join(f"{k % 2}\n" for k in range(len(lines))))
    small = ImageFont.truetype(a.font, 22)
    page = Image.new("RGB", (480, 480), (245, 243, 235))
    draw = ImageDraw.Draw(page)
    for k, t in enumerate(LINES):
        draw.text((20 + 10 * (k % 3), 20 + 55 * k), t, font=small, fill=(25, 25, 35))
    x = np.asarray(page, dtype=np.float32) / 255.0
    x = (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.save(os.path.join(a.out, "det.npy"), x.transpose(2, 0, 1)[None].astype(np.float32))
    page.save(os.path.join(a.out, "det.png"))
    faces = fonts(a.font)
    for name, texts in (("_cal", CALIBRATION), ("_eval", LINES + MORE)):
        images = [line_image(t, faces[k % len(faces)]) for k, t in enumerate(texts)]
        if name == "_eval":  # the 8 lines above as they are
            images[: len(LINES)] = lines
        save_lines(a.out, name, images)
        # Eight pages of 16 lines: page p starts at line 3p (wrapping), in face p % 4, at
        # 18-22 px (the first page: the first 16 lines in DejaVu Sans 20, as before).
        found = [f for f in (os.path.join(os.path.dirname(a.font), n) for n in FACES) if os.path.exists(f)]
        pages = []
        for p in range(8):
            order = [texts[(3 * p + k) % len(texts)] for k in range(16)]
            face = (found or [a.font])[p % len(found or [a.font])] if p else a.font
            x, img = render_page(order, face, (20, 18, 22, 19, 21, 20, 18, 22)[p], shift=p)
            pages.append(x)
            if p == 0:
                img.save(os.path.join(a.out, f"det{name}.png"))
        np.save(os.path.join(a.out, f"det{name}.npy"), np.concatenate(pages))
    print("wrote", a.out)


if __name__ == "__main__":
    main()
