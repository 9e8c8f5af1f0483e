"""``examples.jsonl``: what each method read for a fixed sample of test problems, at every layer column.

One JSON object a line, one line per method, target and example problem::

    {"method": "logit_lens", "target": "answer", "scale": 2, "seed": 0, "prompt": "47+85=", "answer": "132",
     "gold": "132", "rows": ["carries=1", "place=units", ...], "notes": {},
     "layers": [{"read": "1", "ok": false, "tokens": [{"gold": "1", "rank": 0, "top": [["1", 0.93], ...]}]}, ...]}

``layers`` holds one reading per layer column (its keys are described in
:mod:`lens_digits.methods.examples`); ``rows`` names the breakdown rows whose
cells count the problem. The problems are test problems of ``prompts.jsonl``
(the same ``seed`` and ``prompt``). A sweep keeps at most
:data:`~lens_digits.methods.examples.N_EXAMPLES` a digit scale (and problem draw)
per method and target, so the file stays small.
"""

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lens_digits.errors import RunDirectoryError
from lens_digits.methods.scores import Scores

EXAMPLES_FILE = "examples.jsonl"

_KEYS = {"method": str, "target": str, "scale": int, "prompt": str, "gold": str, "layers": list}


def example_records(results: Sequence[tuple[str, str, Scores]]) -> list[dict[str, Any]]:
    """The example readings of scored methods, as ``examples.jsonl`` holds them.

    Returns:
        One record per method, target and example problem, in the order of ``results``.
    """
    out = []
    for method, target, scores in results:
        for e in scores.examples:
            p = e.problem
            out.append(
                {
                    "method": method,
                    "target": target,
                    "scale": p.scale,
                    "seed": p.seed,
                    "prompt": p.prompt,
                    "answer": p.answer,
                    "gold": e.gold,
                    "rows": list(e.rows),
                    "notes": dict(e.notes),
                    "layers": list(e.layers),
                }
            )
    return out


def examples_text(records: Sequence[dict[str, Any]]) -> str:
    """The records as the lines of ``examples.jsonl``.

    Returns:
        One compact JSON object a line, each line ended.
    """
    return "".join(json.dumps(r, separators=(",", ":"), ensure_ascii=False) + "\n" for r in records)


def read_examples(path: Path) -> list[dict[str, Any]]:
    """The records of ``examples.jsonl``, checked.

    Returns:
        The records, in file order (blank lines skipped).

    Raises:
        RunDirectoryError: A line is not a JSON object, lacks a key or has one of the wrong type, or its readings
            are not objects; the message names the file and line.
    """
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise RunDirectoryError(f"{path}: not UTF-8 text ({e.reason}); the file is damaged, rerun the sweep") from None
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}, line {line_no}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise RunDirectoryError(f"{where}: not valid JSON ({e.msg}); the file is damaged, rerun the sweep") from None
        if not isinstance(record, dict):
            raise RunDirectoryError(f"{where}: expected a JSON object, got {type(record).__name__}")
        for key, kind in _KEYS.items():
            if key not in record:
                raise RunDirectoryError(f"{where}: missing key {key!r}")
            if not isinstance(record[key], kind) or isinstance(record[key], bool):
                raise RunDirectoryError(f"{where}: {key} must be {kind.__name__}, got {record[key]!r}")
        if not all(isinstance(reading, dict) for reading in record["layers"]):
            raise RunDirectoryError(f"{where}: every reading in 'layers' must be an object")
        record.setdefault("rows", [])
        record.setdefault("notes", {})
        records.append(record)
    return records
