"""Run-directory helpers shared by the filesystem tests: a fake run directory's contents and its tag."""

import json
from pathlib import Path

from lens_digits.storage import paths


def fill_with(tag: str):
    """A fill step that writes every run file, with ``tag`` in run.json (a folder lens-digits would recognise)."""

    def fill(tmp: Path) -> None:
        for name in paths.RUN_FILES:
            (tmp / name).write_text(tag)
        (tmp / "run.json").write_text(json.dumps({"format": paths.RUN_FORMAT, "tag": tag}))

    return fill


def tag_of(folder: Path) -> str:
    """The tag a run directory made by :func:`fill_with` carries."""
    return json.loads((folder / "run.json").read_text())["tag"]
