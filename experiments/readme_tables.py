"""Keep the README's result tables equal to the result files that produced them.

A table in README.md is written between two markers that name its source::

    <!-- table: docs/results/demo.md -->
    | Method | ... |
    <!-- /table -->

(``docs/results/X.md#2`` takes the file's second table.) This script rewrites every such block from
its file; ``--check`` only compares them (exit 1 and the names of the stale blocks otherwise; the
test suite runs it); ``--run-demo`` first reruns ``jit-jax demo`` (3 seeds, ~1 min on 2 cores) in a
temporary folder and writes its table to ``docs/results/demo.md`` and ``.json``::

    python experiments/readme_tables.py --run-demo      # rerun the quickstart, rewrite README
    python experiments/readme_tables.py --check         # are the README's tables current?
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- table: (?P<src>[^ #]+)(?:#(?P<num>\d+))? -->\n)(?P<body>.*?)(<!-- /table -->)",
                   re.S)
TABLE = re.compile(r"((?:^\|.*\|\n)+)", re.M)


def table_of(path: Path, num: int = 1) -> str:
    """The ``num``-th markdown table (1-based) of the file at ``path``."""
    tables = TABLE.findall(path.read_text())
    if len(tables) < num:
        raise ValueError(f"{path} has {len(tables)} markdown table(s); the README asks for #{num}")
    return tables[num - 1]


def render(readme: str, root: Path = ROOT) -> tuple[str, list[str]]:
    """README text with every block rewritten from its file, and the sources that changed."""
    stale = []

    def sub(m):
        src, num = m["src"], int(m["num"] or 1)
        new = table_of(root / src, num)
        if new != m["body"]:
            stale.append(f"{src}#{num}")
        return m.group(1) + new + m.group(5)

    return BLOCK.sub(sub, readme), stale


def run_demo(root: Path = ROOT) -> None:
    sys.path.insert(0, str(root))
    from jit_jax.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        rc = main(["demo", "--out", str(Path(tmp) / "demo"), "--no-progress"])
        if rc:
            raise SystemExit(rc)
        for ext in (".md", ".json"):
            shutil.copy(Path(tmp) / "demo" / f"results{ext}", root / "docs" / "results" / f"demo{ext}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="compare only; exit 1 if any is stale")
    p.add_argument("--run-demo", action="store_true", help="rerun jit-jax demo first")
    args = p.parse_args(argv)
    if args.run_demo:
        run_demo()
    readme = ROOT / "README.md"
    text, stale = render(readme.read_text())
    if args.check:
        for s in stale:
            print(f"stale README table: {s} (rewrite: python experiments/readme_tables.py)")
        return 1 if stale else 0
    readme.write_text(text)
    print(f"rewrote {len(stale)} table(s): {', '.join(stale) or 'none changed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
