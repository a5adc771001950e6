"""Core Lightning's JSON schemas (a copy of v26.06.6 lives in `schemas/`), with the extra types
lightningd's schemas use (`pubkey`, `msat`, `u32`, `short_channel_id`, ...), checked the way
pyln-testing checks them.

Direction matters for amounts: what lightningd *produces* (RPC results, hook payloads,
notifications) carries `msat` as a plain integer; what it *accepts* (RPC params, hook results)
may be `"1000msat"`, `"1sat"`, `"0.1btc"` or an integer.
"""

from __future__ import annotations

import json
import re
import string
import threading
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError
from pyln.client import Millisatoshi

SCHEMA_VERSION = "v26.06.6"
DEFAULT_SCHEMA_DIR = Path(__file__).resolve().parent / "schemas" / SCHEMA_VERSION

_SCID_RE = re.compile(r"^\d+x\d+x\d+$")


def _make_validator_class(accepting: bool) -> Any:
    """A Draft-7 validator class knowing lightningd's types; `accepting` = input to lightningd."""

    def is_hex(checker: Any, inst: Any) -> bool:
        return (
            isinstance(inst, str)
            and len(inst) % 2 == 0
            and all(c in string.hexdigits for c in inst)
        )

    def uint(bits: int) -> Any:
        def check(checker: Any, inst: Any) -> bool:
            return type(inst) is int and 0 <= inst < 2**bits

        return check

    def is_scid(checker: Any, inst: Any) -> bool:
        if not isinstance(inst, str) or not _SCID_RE.match(inst):
            return False
        block, tx, out = (int(p) for p in inst.split("x"))
        return block < 2**24 and tx < 2**24 and out < 2**16

    def is_scid_dir(checker: Any, inst: Any) -> bool:
        return isinstance(inst, str) and inst[-2:] in ("/0", "/1") and is_scid(checker, inst[:-2])

    def is_outpoint(checker: Any, inst: Any) -> bool:
        if not isinstance(inst, str) or inst.count(":") != 1:
            return False
        txid, _, vout = inst.partition(":")
        return len(txid) == 64 and is_hex(checker, txid) and vout.isdigit() and int(vout) < 2**32

    def is_feerate(checker: Any, inst: Any) -> bool:
        if type(inst) is int:
            return True
        if not isinstance(inst, str):
            return False
        if inst in (
            "urgent",
            "normal",
            "slow",
            "minimum",
            "opening",
            "mutual_close",
            "unilateral_close",
            "delayed_to_us",
            "htlc_resolution",
            "penalty",
            "min_acceptable",
            "max_acceptable",
        ):
            return True
        for suffix in ("perkw", "perkb"):
            if inst.endswith(suffix):
                return inst[: -len(suffix)].isdigit()
        return inst.isdigit()

    def is_pubkey(checker: Any, inst: Any) -> bool:
        return is_hex(checker, inst) and len(inst) == 66 and inst[:2] in ("02", "03")

    def is_hex32(checker: Any, inst: Any) -> bool:
        return is_hex(checker, inst) and len(inst) == 64

    def is_signature(checker: Any, inst: Any) -> bool:
        return is_hex(checker, inst) and len(inst) <= 144

    def is_bip340sig(checker: Any, inst: Any) -> bool:
        return is_hex(checker, inst) and len(inst) == 128

    def is_amount_in(checker: Any, inst: Any) -> bool:
        if isinstance(inst, bool):
            return False
        try:
            Millisatoshi(inst)
            return True
        except (TypeError, ValueError):
            return False

    def is_msat_out(checker: Any, inst: Any) -> bool:
        return type(inst) is int and inst >= 0

    is_msat = is_amount_in if accepting else is_msat_out

    def is_sat(checker: Any, inst: Any) -> bool:
        if type(inst) is int:
            return inst >= 0
        return accepting and is_amount_in(checker, inst)

    def or_word(word: str, base: Any) -> Any:
        def check(checker: Any, inst: Any) -> bool:
            return inst == word or bool(base(checker, inst))

        return check

    def is_currency(checker: Any, inst: Any) -> bool:
        return isinstance(inst, str) and re.match(r"^\d+(\.\d+)?[A-Z][A-Z][A-Z]$", inst) is not None

    def is_outputdesc(checker: Any, inst: Any) -> bool:
        if not isinstance(inst, dict):
            return False
        return all(
            isinstance(k, str) and (v == "all" or is_amount_in(checker, v)) for k, v in inst.items()
        )

    def is_string(checker: Any, inst: Any) -> bool:
        return isinstance(inst, str)

    checker = jsonschema.Draft7Validator.TYPE_CHECKER.redefine_many(
        {
            "hex": is_hex,
            "hash": is_hex32,
            "secret": is_hex32,
            "txid": is_hex32,
            "u64": uint(64),
            "u32": uint(32),
            "u16": uint(16),
            "u8": uint(8),
            "pubkey": is_pubkey,
            "sat": is_sat,
            "sat_or_all": or_word("all", is_sat),
            "msat": is_msat,
            "msat_or_all": or_word("all", is_msat),
            "msat_or_any": or_word("any", is_msat),
            "currency": is_currency,
            "signature": is_signature,
            "bip340sig": is_bip340sig,
            "short_channel_id": is_scid,
            "short_channel_id_dir": is_scid_dir,
            "outpoint": is_outpoint,
            "feerate": is_feerate,
            "outputdesc": is_outputdesc,
            "rune": is_string,
        }
    )
    return jsonschema.validators.extend(jsonschema.Draft7Validator, type_checker=checker)


_ACCEPTING = _make_validator_class(True)
_PRODUCING = _make_validator_class(False)


def _format_errors(validator: Any, instance: Any, limit: int = 6) -> list[str]:
    errors = sorted(validator.iter_errors(instance), key=lambda e: (len(e.path), str(e.path)))
    out: list[str] = []
    for err in errors[:limit]:
        out.append(_describe(err))
    if len(errors) > limit:
        out.append(f"... and {len(errors) - limit} more")
    return out


def _describe(err: ValidationError) -> str:
    where = "/".join(str(p) for p in err.absolute_path) or "<root>"
    msg = err.message
    if len(msg) > 300:
        msg = msg[:300] + "..."
    if err.context:
        best = jsonschema.exceptions.best_match(err.context)
        if best is not None and best.message != err.message:
            msg += f" (e.g. {best.message[:200]})"
    return f"{where}: {msg}"


class SchemaSet:
    """Loads schemas lazily; thread safe. Every check returns a list of error strings (empty
    means valid); `None` means there is no schema to check against."""

    def __init__(self, root: Path = DEFAULT_SCHEMA_DIR) -> None:
        self.root = Path(root)
        if not (self.root / "getinfo.json").is_file():
            raise FileNotFoundError(f"no Core Lightning schemas in {self.root}")
        self._lock = threading.Lock()
        self._docs: dict[str, dict[str, Any] | None] = {}
        self._validators: dict[tuple[str, str, bool], Any] = {}

    # -- loading ---------------------------------------------------------------------------
    def _doc(self, rel: str) -> dict[str, Any] | None:
        with self._lock:
            if rel not in self._docs:
                path = self.root / f"{rel}.json"
                self._docs[rel] = json.loads(path.read_text()) if path.is_file() else None
            return self._docs[rel]

    def _validator(self, rel: str, part: str, accepting: bool) -> Any | None:
        key = (rel, part, accepting)
        with self._lock:
            if key in self._validators:
                return self._validators[key]
        doc = self._doc(rel)
        validator = None
        if doc is not None and part in doc:
            cls = _ACCEPTING if accepting else _PRODUCING
            validator = cls(doc[part])
        with self._lock:
            self._validators[key] = validator
        return validator

    def _check(self, rel: str, part: str, accepting: bool, instance: Any) -> list[str] | None:
        validator = self._validator(rel, part, accepting)
        if validator is None:
            return None
        return _format_errors(validator, instance)

    # -- RPCs ------------------------------------------------------------------------------
    def has_rpc(self, method: str) -> bool:
        return "/" not in method and self._doc(method) is not None

    def rpc_param_names(self, method: str) -> list[str]:
        """Positional order of an RPC's parameters (lightningd's `param()` order, which the
        schema's `properties` follow)."""
        doc = self._doc(method) or {}
        return list(doc.get("request", {}).get("properties", {}).keys())

    def check_rpc_request(self, method: str, params: dict[str, Any]) -> list[str] | None:
        return self._check(method, "request", True, params)

    def check_rpc_response(self, method: str, result: Any) -> list[str] | None:
        return self._check(method, "response", False, result)

    # -- hooks (lightningd -> plugin request, plugin -> lightningd result) -------------------
    def check_hook_payload(self, hook: str, payload: Any) -> list[str] | None:
        return self._check(f"hook/{hook}", "request", False, payload)

    def check_hook_result(self, hook: str, result: Any) -> list[str] | None:
        return self._check(f"hook/{hook}", "response", True, result)

    def has_hook(self, hook: str) -> bool:
        return self._doc(f"hook/{hook}") is not None

    # -- notifications (lightningd -> plugin; the payload is the schema's "response") --------
    def check_notification(self, topic: str, payload: Any) -> list[str] | None:
        return self._check(f"notification/{topic}", "response", False, payload)

    def has_notification(self, topic: str) -> bool:
        return self._doc(f"notification/{topic}") is not None
