"""Rebuild the layouts corpus: auto-labelled layouts of TeX Live manuals (not part of CI).

Source: the PDF manuals that Debian's TeX Live documentation packages install under
/usr/share/doc/texlive-doc (install them first, e.g.
`apt-get install texlive-latex-base-doc texlive-latex-recommended-doc texlive-pictures-doc`).
Each page's blocks are extracted with pdfplumber (MIT) and labelled by the rules below, boxes are
normalised to the page, and pages with 2..25 elements are kept.

Labelling rules (ours; docs/layouts.md measures how often they agree with a human):
- text lines come from pdfplumber's ``extract_text_lines``; consecutive lines join a block when
  the vertical gap is under one line height, their font sizes agree within 1 pt, they overlap
  horizontally, and the new line does not start a list item below a non-list line;
- **title**: a block of at most 2 lines whose median character size is at least 1.15× the
  page's body size (the median over all characters), or whose characters are all bold
  (font name containing "Bold", "CMBX", "-BX" or "Black") and at most 12 words;
- **list**: a block whose first line starts with a bullet (•, ◦, –, —, ·, *, ▪, ‣) or an
  enumeration ("1.", "2)", "(a)", "iv.");
- **table**: a region pdfplumber's ruled-line table finder returns (``find_tables``) with at
  least 2 rows and 2 columns, half of its cells holding text, and no image inside; the text inside
  it belongs to the table. Other such regions (a framed code line, a ruled diagram) go to the
  figure rule;
- **figure**: an embedded image, or a cluster of vector drawings (curves, rectangles, lines that
  are not a table's rules or a thin full-width separator), at least 24 pt on both sides and 1%
  of the page; the text inside it belongs to the figure. A cluster without an image around 20 or
  more characters that is either at most 4 rectangles or lines (a frame, a background) or
  covered to 15% by the characters' boxes is a framed or shaded text box (a code listing);
- **text**: every other block; one- or two-word lines in the top 8% or the bottom 12% of the
  page (page numbers, running heads) are left out.

Usage: python tools/build_layout_corpus.py --out pgraft/tasks/data/layouts_texdocs.npz
       [--max-pages-per-pdf 40] [--max-pdfs 0] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TYPES = ("text", "title", "list", "table", "figure")
MAX_ELEMENTS = 25
MIN_ELEMENTS = 2
PACKAGES = ("texlive-base", "texlive-latex-base-doc", "texlive-latex-recommended-doc", "texlive-pictures-doc")
ROOT = Path("/usr/share/doc/texlive-doc")
BULLETS = ("•", "◦", "–", "—", "·", "*", "▪", "‣", "∙")
ENUM = re.compile(r"^(\(?\d{1,2}[.)]|\(?[a-z][.)]|\(?[ivx]{1,4}[.)])$")
BOLD = ("bold", "cmbx", "-bx", "black", "cmssbx")


def _bold(char) -> bool:
    name = char["fontname"].lower()
    return any(b in name for b in BOLD)


def _starts_item(line) -> bool:
    first = line["text"].split(" ", 1)[0] if line["text"].strip() else ""
    return first in BULLETS or bool(ENUM.match(first)) or line["text"][:1] in BULLETS


def _inside(box, region, margin=2.0) -> bool:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return region[0] - margin <= cx <= region[2] + margin and region[1] - margin <= cy <= region[3] + margin


def _union(a, b):
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def _near(a, b, pad=6.0) -> bool:
    return not (a[2] + pad < b[0] or b[2] + pad < a[0] or a[3] + pad < b[1] or b[3] + pad < a[1])


def _clusters(boxes):
    """Groups of boxes within 6 pt of each other: [(bounding box, number of boxes)]."""
    out = []
    for box in sorted(boxes, key=lambda b: (b[1], b[0])):
        count, merged = 1, True
        while merged:
            merged = False
            for i, (c, n) in enumerate(out):
                if _near(c, box):
                    out.pop(i)
                    box, count, merged = _union(c, box), count + n, True
                    break
        out.append((box, count))
    return out


def text_blocks(page, body_size: float):
    lines = [ln for ln in page.extract_text_lines(return_chars=True) if ln["text"].strip()]
    lines.sort(key=lambda ln: (round(ln["top"]), ln["x0"]))
    blocks = []
    for ln in lines:
        size = statistics.median(c["size"] for c in ln["chars"])
        height = ln["bottom"] - ln["top"]
        item = _starts_item(ln)
        b = blocks[-1] if blocks else None
        joins = (
            b is not None
            and -0.5 * height <= ln["top"] - b["bottom"] < 1.0 * max(height, 1.0)
            and abs(size - b["size"]) < 1.0
            and ln["x0"] < b["x1"]
            and b["x0"] < ln["x1"]
            and not (item and not b["list"])
        )
        if joins:
            b.update(x0=min(b["x0"], ln["x0"]), x1=max(b["x1"], ln["x1"]), bottom=max(b["bottom"], ln["bottom"]))
            b["lines"] += 1
            b["words"] += len(ln["text"].split())
            b["bold"] = b["bold"] and all(_bold(c) for c in ln["chars"] if c["text"].strip())
        else:
            blocks.append(
                {
                    "x0": ln["x0"], "x1": ln["x1"], "top": ln["top"], "bottom": ln["bottom"], "size": size,
                    "lines": 1, "words": len(ln["text"].split()), "list": item,
                    "bold": all(_bold(c) for c in ln["chars"] if c["text"].strip()),
                }
            )  # fmt: skip
    out = []
    for b in blocks:
        margin = b["bottom"] < 0.08 * page.height or b["top"] > 0.88 * page.height
        if margin and b["lines"] == 1 and b["words"] <= 2:
            continue  # a running header or page number, as PubLayNet leaves out
        if b["lines"] <= 2 and (b["size"] >= 1.15 * body_size or (b["bold"] and b["words"] <= 12)):
            kind = "title"
        elif b["list"]:
            kind = "list"
        else:
            kind = "text"
        out.append((kind, (b["x0"], b["top"], b["x1"], b["bottom"])))
    return out


def page_layout(page):
    """[(type, (x0, top, x1, bottom))] of one page, by the rules above."""
    chars = [c["size"] for c in page.chars if c["text"].strip()]
    if not chars:
        return []
    body = statistics.median(chars)
    w, h = float(page.width), float(page.height)
    images = [(o["x0"], o["top"], o["x1"], o["bottom"]) for o in page.images]
    tables = []
    for t in page.find_tables():
        rows = t.extract()
        cells = [c for r in rows for c in r]
        filled = sum(bool(c and c.strip()) for c in cells) / max(len(cells), 1)
        if any(_near(i, t.bbox, 0) for i in images):
            continue  # ruled frames around a picture: left to the figure rule
        if len(rows) >= 2 and max(len(r) for r in rows) >= 2 and filled >= 0.5:
            tables.append(t.bbox)  # else a framed cell or a ruled diagram: its rules go to the figure rule
    pictorial = [(o["x0"], o["top"], o["x1"], o["bottom"]) for o in page.images + page.curves]
    graphics = list(pictorial)
    for o in page.rects + page.lines:
        box = (o["x0"], o["top"], o["x1"], o["bottom"])
        thin_rule = (box[3] - box[1]) < 1.5 and (box[2] - box[0]) > 0.5 * w
        if not thin_rule and not any(_inside(box, t) for t in tables):
            graphics.append(box)
    elements = [("table", t) for t in tables]
    for c, count in _clusters(graphics):
        if c[2] - c[0] < 24 or c[3] - c[1] < 24 or (c[2] - c[0]) * (c[3] - c[1]) < 0.01 * w * h:
            continue
        # a frame or background around dense text and no image: a shaded or framed text box such
        # as a code listing (its characters cover ≥ 15% of it; a diagram's labels cover less)
        inner = [ch for ch in page.chars if _inside((ch["x0"], ch["top"], ch["x1"], ch["bottom"]), c, 0)]
        ink = sum((ch["x1"] - ch["x0"]) * (ch["bottom"] - ch["top"]) for ch in inner)
        framed_text = (
            (count <= 4 or ink >= 0.15 * (c[2] - c[0]) * (c[3] - c[1]))
            and len(inner) >= 20
            and not any(_inside(i, c) for i in images)
        )
        if not framed_text:
            elements.append(("figure", c))
    for kind, box in text_blocks(page, body):
        if not any(_inside(box, region) for _, region in elements):
            elements.append((kind, box))
    return [(k, b) for k, b in elements if b[2] > b[0] and b[3] > b[1]]


def normalise(elements, w: float, h: float) -> np.ndarray:
    rows = []
    for kind, (x0, top, x1, bottom) in elements:
        x0, x1 = min(max(x0, 0.0), w) / w, min(max(x1, 0.0), w) / w
        y0, y1 = min(max(top, 0.0), h) / h, min(max(bottom, 0.0), h) / h
        if x1 > x0 and y1 > y0:  # what lies off the page (outside its crop box) is dropped
            rows.append([TYPES.index(kind), (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0])
    rows.sort(key=lambda r: (r[2], r[1]))  # reading order: top to bottom, left to right
    return np.asarray(rows, dtype=np.float32).reshape(-1, 5)


def extract_pdf(job):
    """(path, [(page number, normalised layout)], skipped counts) of one PDF's first pages."""
    import pdfplumber

    path, max_pages = job
    pages, skipped = [], {"unreadable": 0, "too_few": 0, "too_many": 0}
    try:
        with pdfplumber.open(path) as pdf:
            for number, page in enumerate(pdf.pages[:max_pages]):
                layout = normalise(page_layout(page), float(page.width), float(page.height))
                if len(layout) < MIN_ELEMENTS:
                    skipped["too_few"] += 1
                elif len(layout) > MAX_ELEMENTS:
                    skipped["too_many"] += 1
                else:
                    pages.append((number, layout))
    except Exception as exc:  # a malformed PDF is skipped and counted, never fatal
        skipped["unreadable"] += 1
        print(f"skipped {path}: {type(exc).__name__}: {exc}", file=sys.stderr)
    return path, pages, skipped


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        res = subprocess.run(["dpkg-query", "-W", "-f=${Version}", name], capture_output=True, text=True)
        out[name] = res.stdout.strip() if res.returncode == 0 else "not installed"
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max-pages-per-pdf", type=int, default=40)
    ap.add_argument("--max-pdfs", type=int, default=0, help="0: every PDF")
    ap.add_argument("--root", type=Path, default=ROOT)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    from tqdm import tqdm

    pdfs = sorted(args.root.rglob("*.pdf"))
    if args.max_pdfs:
        pdfs = pdfs[: args.max_pdfs]
    layouts, sources, skipped = [], [], {"unreadable": 0, "too_few": 0, "too_many": 0}
    started = time.time()
    jobs = [(path, args.max_pages_per_pdf) for path in pdfs]
    with multiprocessing.Pool(args.workers) as pool:
        for path, pages, counts in tqdm(pool.imap(extract_pdf, jobs), total=len(jobs), desc="PDFs"):
            for key, value in counts.items():
                skipped[key] += value
            for number, array in pages:
                layouts.append(array)
                sources.append((str(path.relative_to(args.root)), number))
    counts = np.array([len(x) for x in layouts], dtype=np.int16)
    boxes = np.zeros((len(layouts), MAX_ELEMENTS, 5), dtype=np.float16)
    for i, x in enumerate(layouts):
        boxes[i, : len(x)] = x
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, boxes=boxes, counts=counts, types=np.array(TYPES))
    manifest = {
        "source": "auto-labelled layouts of TeX Live manuals (Debian texlive-*-doc packages)",
        "packages": package_versions(),
        "pdfs": len(pdfs),
        "pages": [f"{p}#{n}" for p, n in sources],
        "skipped_pages": skipped,
        "max_pages_per_pdf": args.max_pages_per_pdf,
        "seconds": round(time.time() - started, 1),
    }
    args.out.with_suffix(".manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{len(layouts)} pages from {len(pdfs)} PDFs -> {args.out}; skipped {skipped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
