"""One error hierarchy for the whole project.

Every error carries a JSON-RPC error code (for the plugin's RPCs) and a process exit code (for the
CLI), so the layers above the engine never have to guess how to report a failure.
"""

from __future__ import annotations


class SuperscalarError(Exception):
    """Base of every error this project raises on purpose."""

    rpc_code: int = -32600
    exit_code: int = 1


class InvalidParameter(SuperscalarError):
    """A caller-supplied parameter is out of range or malformed; the message names it."""

    rpc_code = -32602
    exit_code = 2


class InvalidShape(InvalidParameter):
    """The factory shape cannot be built (arity, client count, EWT above its limit, ...)."""


class InvalidAmount(InvalidParameter):
    """An amount is below dust, negative, or cannot cover what it must pay."""


class MuSigError(SuperscalarError):
    """A MuSig2 operation failed (bad key, bad nonce, library refusal)."""

    rpc_code = 1400


class NonceReuseError(MuSigError):
    """A secret nonce was used twice, copied, or serialized. Never allowed."""


class InvalidPartialSignature(MuSigError):
    """A participant's partial signature does not verify. `signer` names the culprit."""

    def __init__(self, signer: str, detail: str = "") -> None:
        self.signer = signer
        msg = f"invalid partial signature from {signer}"
        super().__init__(f"{msg}: {detail}" if detail else msg)


class CeremonyError(SuperscalarError):
    """A signing ceremony received something out of order, malformed or unsafe to sign."""

    rpc_code = 1401


class UnsafeToSign(CeremonyError):
    """A client refused to sign: what it was asked to sign does not match what it agreed to."""

    rpc_code = 1402


class AlreadySigned(UnsafeToSign):
    """A client that signed a factory refused a later request for it; its signed path stands."""


class UnsafeSale(UnsafeToSign):
    """A co-signer refused a liquidity sale or its burn tx; `field` names what is wrong (e.g.
    `change.amount`, `burn.locktime`), so the refusal can be reported and tested precisely."""

    def __init__(self, field: str, detail: str) -> None:
        self.field = field
        super().__init__(f"sale {field}: {detail}")


class StockAlreadySold(UnsafeSale):
    """A second, different sale of a stock output this co-signer already signed a sale of: each
    stock output is spent by at most one sale (spec-notes 2.5)."""


class WireError(SuperscalarError):
    """A peer message could not be parsed."""

    rpc_code = 1403


class StoreError(SuperscalarError):
    """A stored record is missing, of an unknown version, or malformed."""

    rpc_code = 1404


class InvalidRecord(StoreError):
    """A stored record parses but is wrong in content; `field` names what is wrong, so the plugin
    can quarantine this record and serve the rest."""

    def __init__(self, field: str, detail: str) -> None:
        self.field = field
        super().__init__(f"record field {field!r}: {detail}")


class ChainError(SuperscalarError):
    """A chain backend refused or failed an operation."""

    rpc_code = 1405
    exit_code = 3


class FactoryExhausted(SuperscalarError):
    """Every DW state on a path is used: the factory can only be closed or migrated."""

    rpc_code = 1406


class HandoverError(SuperscalarError):
    """A handed-over factory key is malformed or not the client's, or a key-path spend lacks a
    key it needs."""

    rpc_code = 1407


class MissingHandedKeys(HandoverError):
    """A key-path spend needs keys not handed over yet; `clients` names whose."""

    def __init__(self, clients: tuple[int, ...], detail: str) -> None:
        self.clients = clients
        super().__init__(detail)
