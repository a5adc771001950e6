"""Load the test vectors kept under tests/vectors/ (JSON and CSV, as published upstream)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

VECTORS_DIR = Path(__file__).parent / "vectors"


def vector_path(relpath: str) -> Path:
    """The path of a vector file, e.g. `vector_path("bip327/key_agg_vectors.json")`."""
    path = VECTORS_DIR / relpath
    if not path.is_file():
        raise FileNotFoundError(f"test vector file missing: {path}")
    return path


def load_json(relpath: str) -> Any:
    """A JSON vector file, parsed."""
    return json.loads(vector_path(relpath).read_text())


def load_csv(relpath: str) -> list[dict[str, str]]:
    """A CSV vector file with a header row, as one dict per row."""
    with vector_path(relpath).open(newline="") as f:
        return list(csv.DictReader(f))


def hexes(values: list[str]) -> list[bytes]:
    """A list of hex strings, decoded."""
    return [bytes.fromhex(v) for v in values]
