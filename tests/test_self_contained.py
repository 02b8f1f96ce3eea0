"""The project stands alone: no file names a document outside it, and every relative link in the
README and docs/ resolves to a file that exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# documents that belong to no clone of this project (spelt in pieces, so this file passes itself)
OUTSIDE = ["METHOD" + ".md", "STACK" + ".md", "DESIGN" + ".md", "../" + "shared", "buffer_" + "format.md"]
TEXT = (".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".sh", ".cpp", ".h", ".cfg")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / f for f in out.split() if f.endswith(TEXT) or Path(f).name in ("Makefile", "run")]


def test_no_file_refers_to_a_document_outside_the_project():
    found = [
        f"{path.relative_to(ROOT)}:{n}: {name}"
        for path in tracked()
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        for name in OUTSIDE
        if name in line
    ]
    assert not found, found


def test_every_relative_link_in_the_docs_resolves():
    broken = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in LINK.findall(path.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (path.parent / target).exists():
                broken.append(f"{path.relative_to(ROOT)} -> {target}")
    assert not broken, broken
