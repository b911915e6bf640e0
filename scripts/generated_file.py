"""Write a generated report, or with --check say whether the committed one is what its script writes.

The report scripts (decisions_report.py, int8_report.py, comparison_table.py) build their Markdown from
committed files; `.ci/run` runs each with --check so a stale report fails CI. Standard library only.
"""
from __future__ import annotations

import sys
from pathlib import Path


def write_or_check(out: Path, text: str, check: bool, command: str) -> int:
    """Exit status: with `check`, 0 if `out` holds exactly `text`, else 1 (naming `command`); without, write it."""
    if check:
        if not out.exists() or out.read_text() != text:
            print(f"{out} is out of date: run {command}", file=sys.stderr)
            return 1
        print(f"{out}: up to date")
        return 0
    out.write_text(text)
    print(f"wrote {out}")
    return 0
