"""Regenerate the parameter table in models/README.md from models/il2_treg_sledai.toml.

Usage: python scripts/model_table.py [--check]   (--check exits 1 if the README is out of date)
"""

from __future__ import annotations

import sys

from il2treg.spec import MODELS_DIR, markdown_table, read_spec

BEGIN, END = "<!-- parameter-table:begin -->\n", "<!-- parameter-table:end -->"


def render(readme: str) -> str:
    table = markdown_table(read_spec(MODELS_DIR / "il2_treg_sledai.toml"))
    head, rest = readme.split(BEGIN)
    _, tail = rest.split(END)
    return head + BEGIN + table + END + tail


if __name__ == "__main__":
    path = MODELS_DIR / "README.md"
    current = path.read_text()
    updated = render(current)
    if "--check" in sys.argv:
        sys.exit(0 if updated == current else 1)
    path.write_text(updated)
    print(f"wrote {path}")
