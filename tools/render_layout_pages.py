"""Render seeded random pages of the layouts corpus with their labelled boxes, for the hand check
of docs/layouts.md (not part of CI; needs the source PDFs and pdfplumber).

Each PNG shows the page with one coloured box per element (text blue, title red, list green,
table orange, figure purple) and the element's number, so a reader can mark each box right or
wrong: type and extent.

Usage: python tools/render_layout_pages.py --pages 15 --seed 0 --out /tmp/layout_check
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from build_layout_corpus import ROOT, page_layout  # noqa: E402

COLORS = {"text": "blue", "title": "red", "list": "green", "table": "orange", "figure": "purple"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, default=Path("pgraft/tasks/data/layouts_texdocs.manifest.json"))
    ap.add_argument("--pages", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    import pdfplumber

    pages = json.loads(args.manifest.read_text())["pages"]
    chosen = random.Random(args.seed).sample(pages, args.pages)
    args.out.mkdir(parents=True, exist_ok=True)
    for i, ref in enumerate(chosen):
        path, number = ref.rsplit("#", 1)
        with pdfplumber.open(ROOT / path) as pdf:
            page = pdf.pages[int(number)]
            image = page.to_image(resolution=72)
            elements = page_layout(page)
            for j, (kind, box) in enumerate(elements):
                image.draw_rect(box, stroke=COLORS[kind], fill=None, stroke_width=2)
            image.save(args.out / f"page{i:02d}.png")
            print(i, ref, [(j, kind) for j, (kind, _) in enumerate(elements)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
