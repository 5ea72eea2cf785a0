"""Rewrite the README's settings table from service/settings.py's SETTINGS (the one source)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.settings import SETTINGS  # noqa: E402

HEADER = "| Variable | Default | Meaning |\n| --- | --- | --- |\n"


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    rows = "".join(f"| `{s.name}` | `{s.default}` | {s.meaning} |\n" for s in SETTINGS)
    new, count = re.subn(re.escape(HEADER) + r"(?:\|.*\n)*", lambda _: HEADER + rows, text)
    if count != 1:
        print("README.md has no settings table to rewrite", file=sys.stderr)
        return 1
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
