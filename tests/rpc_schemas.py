"""The plugin's own RPC schemas (doc/schemas/factory-*.json, in the format of Core Lightning's
doc/schemas), checked with the harness's validator, which knows lightningd's types."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.schemas import _PRODUCING, _format_errors

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "doc" / "schemas"


def schema(command: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((SCHEMA_DIR / f"{command}.json").read_text())
    return doc


def result_errors(command: str, result: Any) -> list[str]:
    errors: list[str] = _format_errors(_PRODUCING(schema(command)["response"]), result)
    return errors


def check_result(command: str, result: Any) -> None:
    errors = result_errors(command, result)
    assert not errors, f"{command} result does not match doc/schemas/{command}.json: {errors}"
