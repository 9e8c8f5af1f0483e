"""Keep the tutorials' Colab install step in one place: this file.

Every notebook's first cell installs lens_digits on Colab with the lines in
``COLAB_INSTALL``; run this script after changing them (for example when the
package is published on PyPI) and every notebook follows. The test suite
checks that they match (``tests/test_tutorials.py``).

    python scripts/sync_tutorials.py
"""

import json
import sys
from pathlib import Path

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"

COLAB_INSTALL = """\
if IN_COLAB:
    # lens-digits is not on PyPI yet (and an unclaimed name there could be anyone's): Colab installs it from the
    # repository this notebook came from. Run this cell and paste that repository's address when asked (or set it
    # below). When the package is published, scripts/sync_tutorials.py changes this step in every notebook at once.
    LENS_DIGITS_REPOSITORY = ""  # for example "https://github.com/<owner>/lens_digits"
    if not LENS_DIGITS_REPOSITORY:
        LENS_DIGITS_REPOSITORY = input("Address of the lens_digits repository (https://github.com/<owner>/lens_digits): ").strip()
    if not LENS_DIGITS_REPOSITORY:
        raise SystemExit("No repository given: run this cell again and paste the lens_digits repository's address.")
    %pip install -q "lens-digits @ git+{LENS_DIGITS_REPOSITORY}"
"""

START = "if IN_COLAB:\n"


def install_block(source: str) -> tuple[int, int]:
    """Where the Colab install block starts and ends in a first cell's source."""
    start = source.index(START)
    end = source.index("\n\n", start) + 1
    return start, end


def sync(path: Path) -> bool:
    """Rewrite one notebook's install block; True if it changed."""
    nb = json.loads(path.read_text())
    cell = nb["cells"][next(i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code")]
    source = "".join(cell["source"])
    start, end = install_block(source)
    new = source[:start] + COLAB_INSTALL + source[end:]
    if new == source:
        return False
    cell["source"] = new.splitlines(keepends=True)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return True


def main() -> int:
    for path in sorted(TUTORIALS.glob("*.ipynb")):
        print(f"{path.name}: {'updated' if sync(path) else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
