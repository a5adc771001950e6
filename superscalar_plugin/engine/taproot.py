"""Taproot outputs of a factory (BIP341/BIP342): keys, leaves, control blocks, sighashes.

Every factory output is a P2TR output whose internal key is a MuSig2 aggregate. Script trees are
small (at most one leaf here), but the functions below follow BIP341 for any tree so the official
wallet vectors can check them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from . import bip340, keyagg, tx as txmod
from .errors import InvalidParameter, MuSigError
from .tx import compact_size, tagged_hash

TAPSCRIPT_LEAF_VERSION = 0xC0
SIGHASH_DEFAULT = 0x00

# Pay-to-anchor (BIP431 companion, Bitcoin Core 28+): OP_1 <0x4e73>, spendable by anyone.
P2A_SCRIPT = bytes.fromhex("51024e73")
ANCHOR_SAT = 240

OP_CHECKSIG = 0xAC
OP_CHECKLOCKTIMEVERIFY = 0xB1
OP_CHECKSEQUENCEVERIFY = 0xB2
OP_DROP = 0x75

# Dust limits of Bitcoin Core's policy at the default dust relay fee (3 sat/vB).
DUST_P2TR = 330
DUST_P2WSH = 330


def tapleaf_hash(script: bytes, leaf_version: int = TAPSCRIPT_LEAF_VERSION) -> bytes:
    return tagged_hash("TapLeaf", bytes([leaf_version]) + compact_size(len(script)) + script)


def tapbranch_hash(a: bytes, b: bytes) -> bytes:
    return tagged_hash("TapBranch", min(a, b) + max(a, b))


@dataclass(frozen=True)
class TapLeaf:
    script: bytes
    leaf_version: int = TAPSCRIPT_LEAF_VERSION

    @cached_property
    def leaf_hash(self) -> bytes:
        return tapleaf_hash(self.script, self.leaf_version)


# A script tree: a leaf, or a pair of subtrees (BIP341's nested-list form).
ScriptTree = TapLeaf | tuple["ScriptTree", "ScriptTree"]


def taproot_tree_helper(tree: ScriptTree) -> tuple[list[tuple[TapLeaf, bytes]], bytes]:
    """BIP341 `taproot_tree_helper`: every leaf with its merkle path, and the tree's root hash."""
    if isinstance(tree, TapLeaf):
        return [(tree, b"")], tree.leaf_hash
    left, left_hash = taproot_tree_helper(tree[0])
    right, right_hash = taproot_tree_helper(tree[1])
    ret = [(leaf, path + right_hash) for leaf, path in left]
    ret += [(leaf, path + left_hash) for leaf, path in right]
    return ret, tapbranch_hash(left_hash, right_hash)


def taproot_tweak(internal_key: bytes, merkle_root: bytes | None) -> bytes:
    """The BIP341 tweak t = hash_TapTweak(P || root); no root means key-path only (BIP341 advice)."""
    if len(internal_key) != 32:
        raise InvalidParameter("internal key must be a 32-byte x-only key")
    return tagged_hash("TapTweak", internal_key + (merkle_root or b""))


def taproot_output_key(internal_key: bytes, merkle_root: bytes | None) -> tuple[bytes, int]:
    """BIP341 `taproot_tweak_pubkey`: (x-only output key, parity of Q)."""
    return _output_key(internal_key, taproot_tweak(internal_key, merkle_root))


def _output_key(internal_key: bytes, tweak: bytes) -> tuple[bytes, int]:
    # A factory's internal keys are MuSig2 aggregates: tweak their context, which the signing
    # of the spending transaction then reuses, instead of tweaking the same point twice.
    known = keyagg.tweaked_aggregate(internal_key, tweak)
    if known is not None:
        return known
    try:
        return bip340.taproot_tweak_pubkey(internal_key, tweak)
    except MuSigError as e:
        raise InvalidParameter(f"cannot tweak internal key: {e}") from e


def p2tr_script(output_key: bytes) -> bytes:
    return b"\x51\x20" + output_key


def _push_int(n: int) -> bytes:
    """Minimal script push of a non-negative number (CScriptNum), as consensus requires."""
    if n == 0:
        return b"\x00"
    if 1 <= n <= 16:
        return bytes([0x50 + n])
    body = n.to_bytes((n.bit_length() + 8) // 8, "little")
    return bytes([len(body)]) + body


def timeout_leaf_script(timeout_height: int, lsp_key: bytes) -> bytes:
    """`<T> OP_CHECKLOCKTIMEVERIFY OP_DROP <L> OP_CHECKSIG`: L alone after the factory's timeout."""
    if not 0 < timeout_height < 500_000_000:
        raise InvalidParameter(f"timeout {timeout_height} is not a block height")
    return (
        _push_int(timeout_height)
        + bytes([OP_CHECKLOCKTIMEVERIFY, OP_DROP, 32])
        + lsp_key
        + bytes([OP_CHECKSIG])
    )


def stock_leaf_script(timeout_height: int, delay: int, lsp_key: bytes) -> bytes:
    """`<T> OP_CHECKLOCKTIMEVERIFY OP_DROP <delay> OP_CHECKSEQUENCEVERIFY OP_DROP <L> OP_CHECKSIG`:
    L alone, never before the factory's timeout T and never before `delay` blocks after the
    stock output confirmed (both must hold: the spend needs nLockTime >= T and nSequence >= delay)."""
    if not 0 < timeout_height < 500_000_000:
        raise InvalidParameter(f"timeout {timeout_height} is not a block height")
    if not 0 < delay < 0xFFFF:
        raise InvalidParameter(f"relative delay {delay} out of range")
    return (
        _push_int(timeout_height)
        + bytes([OP_CHECKLOCKTIMEVERIFY, OP_DROP])
        + _push_int(delay)
        + bytes([OP_CHECKSEQUENCEVERIFY, OP_DROP, 32])
        + lsp_key
        + bytes([OP_CHECKSIG])
    )


@dataclass(frozen=True)
class TaprootOutput:
    """A P2TR output: internal key plus an optional script tree."""

    internal_key: bytes
    tree: ScriptTree | None = None

    @cached_property
    def _leaves_and_root(self) -> tuple[list[tuple[TapLeaf, bytes]], bytes | None]:
        if self.tree is None:
            return [], None
        return taproot_tree_helper(self.tree)

    @property
    def merkle_root(self) -> bytes | None:
        return self._leaves_and_root[1]

    @cached_property
    def tweak(self) -> bytes:
        return taproot_tweak(self.internal_key, self.merkle_root)

    @cached_property
    def _output(self) -> tuple[bytes, int]:
        return _output_key(self.internal_key, self.tweak)

    @property
    def output_key(self) -> bytes:
        return self._output[0]

    @property
    def script_pubkey(self) -> bytes:
        return p2tr_script(self.output_key)

    @property
    def leaves(self) -> list[TapLeaf]:
        return [leaf for leaf, _ in self._leaves_and_root[0]]

    def control_block(self, leaf: TapLeaf) -> bytes:
        """BIP341 control block for spending `leaf` through the script path."""
        for candidate, path in self._leaves_and_root[0]:
            if candidate == leaf:
                return bytes([leaf.leaf_version | self._output[1]]) + self.internal_key + path
        raise InvalidParameter("leaf is not in this output's script tree")


def taproot_sighash(
    tx: txmod.Tx,
    input_index: int,
    spent_outputs: list[tuple[int, bytes]],
    hash_type: int = SIGHASH_DEFAULT,
    leaf: TapLeaf | None = None,
) -> bytes:
    """BIP341 signature message hash for key-path (leaf=None) or script-path spends."""
    spent = [txmod.TxOut(amount, script) for amount, script in spent_outputs]
    return txmod.taproot_sighash(
        tx, input_index, spent, hash_type, leaf.leaf_hash if leaf is not None else None
    )
