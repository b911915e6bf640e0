#!/usr/bin/env python3
"""Keeps a minimised corpus small enough to commit: deletes the inputs of
fuzz/corpus/<target>/ larger than MAX_BYTES (the seeds, committed apart, keep the large real
files), and records the counts before and after in fuzz/logs/<target>.corpus.json.
Usage: python3 fuzz/trim_corpus.py <target> [MAX_BYTES, default 8192]
"""
import json
import pathlib
import sys

FUZZ = pathlib.Path(__file__).resolve().parent
target = sys.argv[1]
max_bytes = int(sys.argv[2]) if len(sys.argv) > 2 else 8192
corpus = [p for p in (FUZZ / "corpus" / target).iterdir() if p.is_file()]
before = (len(corpus), sum(p.stat().st_size for p in corpus))
for p in corpus:
    if p.stat().st_size > max_bytes:
        p.unlink()
kept = [p for p in corpus if p.exists()]
after = (len(kept), sum(p.stat().st_size for p in kept))
(FUZZ / "logs" / f"{target}.corpus.json").write_text(json.dumps({
    "cmin_files": before[0], "cmin_bytes": before[1],
    "max_bytes_kept": max_bytes, "kept_files": after[0], "kept_bytes": after[1],
}) + "\n")
print(f"{target}: {before[0]} files ({before[1]} bytes) after cmin, "
      f"{after[0]} ({after[1]} bytes) kept at most {max_bytes} bytes each")
