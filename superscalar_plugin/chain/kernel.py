"""An embedded regtest chain validated by Bitcoin Core's own consensus engine (py-bitcoinkernel).

Blocks are built here (coinbase with the BIP34 height, witness commitment, merkle root, trivial
proof of work at nBits 0x207fffff, nTime 600 s after its parent) and handed to the kernel's
`ChainstateManager`, which applies Core's real rules: taproot, CLTV, CSV/BIP68, coinbase maturity.
There is no mempool and no policy: only consensus.

Sharp edges of py-bitcoinkernel 0.1.0a5 handled here:
- `process_block` returning True does not mean the block is valid: acceptance is decided by
  comparing the active tip's hash with the block's hash afterwards.
- The kernel exposes no reject reason on its API (`BlockValidationState` only carries a mode and
  a coarse result): the reason is read from the kernel log while the block is processed.
- The kernel exposes no UTXO view: the UTXO set is tracked here from accepted blocks, and rebuilt
  from the block files when an existing datadir is reopened.
- No kernel view (chain, entry) is kept across calls, so none outlives the chainstate manager.

A tiny wallet (one P2TR key-path key, deterministic, regtest only) receives the coinbases and funds
whatever tests and the demo need.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import tempfile
import threading
import weakref
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, Self

import coincurve
import pbk

from superscalar_plugin.chain.btx import (
    CMutableTransaction,
    CMutableTxIn,
    CMutableTxOut,
    COutPoint,
    CScript,
    CScriptWitness,
    CTransaction,
    CTxOut,
    SignatureHashSchnorr,
)
from superscalar_plugin.chain.kernel_log import KERNEL_LOG, reject_reason
from superscalar_plugin.engine.errors import ChainError, InvalidAmount, InvalidParameter

__all__ = [
    "BLOCK_INTERVAL",
    "COINBASE_MATURITY",
    "FUND_FEE_SAT",
    "BlockResult",
    "KernelChain",
    "block_subsidy",
]

GENESIS_TIME = 1296688602  # regtest genesis nTime
BLOCK_INTERVAL = 600  # seconds between consecutive block timestamps
BLOCK_VERSION = 0x20000000
NBITS = 0x207FFFFF
POW_TARGET = 0x7FFFFF << (8 * (0x20 - 3))
HALVING_INTERVAL = 150  # regtest
COINBASE_MATURITY = 100
COIN = 100_000_000
MAX_MONEY = 21_000_000 * COIN
FUND_FEE_SAT = 1_000  # flat fee of every wallet transaction (no mempool, no policy)
CHANGE_DUST_SAT = 330  # change below this goes to the fee
MAX_FUNDING_BLOCKS = 1_000  # blocks fund() may mine while looking for enough mature coins
WITNESS_RESERVED_VALUE = bytes(32)
WITNESS_COMMITMENT_HEADER = bytes.fromhex("6a24aa21a9ed")
_WALLET_SECRET = hashlib.sha256(b"superscalar/kernel-chain/regtest-wallet").digest()
_SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_SEQUENCE_FINAL = 0xFFFFFFFF
_SEQUENCE_RBF = 0xFFFFFFFD


@dataclass(frozen=True)
class BlockResult:
    """Outcome of one attempt to extend the tip."""

    accepted: bool
    height: int  # tip height after the attempt
    block_hash: str  # hex (display order) of the attempted block
    reason: str | None  # Core's reject reason when rejected, None when accepted
    detail: str | None = None  # Core's debug message accompanying the reason, if any


# --- serialization helpers ------------------------------------------------------------------


def _sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def _compact_size(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + struct.pack("<H", n)
    if n <= 0xFFFFFFFF:
        return b"\xfe" + struct.pack("<I", n)
    return b"\xff" + struct.pack("<Q", n)


def _push_int(n: int) -> bytes:
    """Script push of a non-negative integer, as Core's `CScript() << n` (OP_0, OP_1..16, data)."""
    if n == 0:
        return b"\x00"
    if n <= 16:
        return bytes([0x50 + n])
    data = bytearray()
    while n:
        data.append(n & 0xFF)
        n >>= 8
    if data[-1] & 0x80:
        data.append(0)
    return bytes([len(data)]) + bytes(data)


def _merkle_root(hashes: Sequence[bytes]) -> bytes:
    level = list(hashes)
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [_sha256d(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def _is_unspendable(script_pubkey: bytes) -> bool:
    """Core never adds these outputs to the UTXO set."""
    return (len(script_pubkey) > 0 and script_pubkey[0] == 0x6A) or len(script_pubkey) > 10_000


def block_subsidy(height: int) -> int:
    """Regtest block subsidy in satoshis (halving every 150 blocks)."""
    halvings = height // HALVING_INTERVAL
    return 0 if halvings >= 64 else (50 * COIN) >> halvings


def _tagged_hash(tag: str, data: bytes) -> bytes:
    tag_hash = hashlib.sha256(tag.encode()).digest()
    return hashlib.sha256(tag_hash + tag_hash + data).digest()


def _keypath_key(secret: bytes) -> tuple[coincurve.PrivateKey, bytes]:
    """BIP86-style key-path-only P2TR: (tweaked signing key, scriptPubKey)."""
    key = coincurve.PrivateKey(secret)
    internal = key.public_key.format(compressed=True)
    d = key.to_int()
    if internal[0] == 0x03:  # BIP340: use the even-y lift of the internal key
        d = _SECP256K1_ORDER - d
    tweak = int.from_bytes(_tagged_hash("TapTweak", internal[1:]), "big")
    tweaked = coincurve.PrivateKey.from_int((d + tweak) % _SECP256K1_ORDER)
    return tweaked, b"\x51\x20" + tweaked.public_key.format(compressed=True)[1:]


def _display(hash_le: bytes) -> str:
    return hash_le[::-1].hex()


class _TxSummary(NamedTuple):
    txid: bytes  # internal byte order
    inputs: tuple[tuple[bytes, int], ...]  # spent outpoints; empty for a coinbase
    outputs: tuple[tuple[int, bytes], ...]  # (amount_sat, scriptPubKey)


def _summarize(tx: CTransaction, *, coinbase: bool) -> _TxSummary:
    inputs = () if coinbase else tuple((bytes(i.prevout.hash), int(i.prevout.n)) for i in tx.vin)
    outputs = tuple((int(o.nValue), bytes(o.scriptPubKey)) for o in tx.vout)
    return _TxSummary(bytes(tx.GetTxid()), inputs, outputs)


def _coinbase(
    height: int, extra_nonce: int, script_pubkey: bytes, value: int, witness_root: bytes
) -> tuple[bytes, _TxSummary]:
    """Serialized coinbase (with witness) and its summary.

    scriptSig: BIP34 height push plus an extra-nonce push (so it is at least 2 bytes and every
    attempt is a distinct block). Outputs: the reward, then the BIP141 witness commitment; the
    coinbase witness is the 32-byte witness reserved value.
    """
    script_sig = _push_int(height) + _push_int(extra_nonce)
    commitment = WITNESS_COMMITMENT_HEADER + _sha256d(witness_root + WITNESS_RESERVED_VALUE)
    outputs = ((value, script_pubkey), (0, commitment))
    version = struct.pack("<i", 2)
    txin = (
        bytes(32) + b"\xff\xff\xff\xff" + _compact_size(len(script_sig)) + script_sig
    ) + struct.pack("<I", _SEQUENCE_FINAL)
    vout = _compact_size(len(outputs)) + b"".join(
        struct.pack("<q", amount) + _compact_size(len(spk)) + spk for amount, spk in outputs
    )
    locktime = struct.pack("<I", 0)
    legacy = version + b"\x01" + txin + vout + locktime
    witness = b"\x01" + _compact_size(len(WITNESS_RESERVED_VALUE)) + WITNESS_RESERVED_VALUE
    full = version + b"\x00\x01" + b"\x01" + txin + vout + witness + locktime
    return full, _TxSummary(_sha256d(legacy), (), outputs)


def _grind_header(prev_hash: bytes, merkle_root: bytes, ntime: int) -> tuple[bytes, bytes]:
    """(80-byte header, block hash) with a nonce meeting the regtest target (about 2 tries)."""
    prefix = struct.pack("<i", BLOCK_VERSION) + prev_hash + merkle_root
    for nonce in range(1 << 32):
        header = prefix + struct.pack("<III", ntime, NBITS, nonce)
        block_hash = _sha256d(header)
        if int.from_bytes(block_hash, "little") <= POW_TARGET:
            return header, block_hash
    raise ChainError("no nonce meets the regtest target")  # pragma: no cover


# --- kernel log: where the reject reason is --------------------------------------------------

# --- the chain ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Coin:
    amount: int
    script_pubkey: bytes
    height: int
    coinbase: bool


Outpoint = tuple[bytes, int]  # (txid in internal byte order, vout)


class KernelChain:
    """A regtest chain on Bitcoin Core's consensus engine, with a tiny built-in wallet.

    Use as a context manager, or call `close()`: it releases the chainstate manager and deletes
    the temporary datadir if this object created it. Thread-safe (one lock per chain; block
    processing is serialised process-wide).
    """

    def __init__(self, datadir: Path | None = None) -> None:
        self._lock = threading.RLock()
        self._owns_datadir = datadir is None
        self._datadir = (
            Path(tempfile.mkdtemp(prefix="kernelchain-")) if datadir is None else datadir
        )
        self._utxos: dict[Outpoint, _Coin] = {}
        self._wallet_coins: set[Outpoint] = set()
        self._locked: set[Outpoint] = set()  # spent by built but not yet mined wallet txs
        self._times: list[int] = []  # nTime by height
        self._tip_hash = bytes(32)
        self._attempts = 0
        self._key, self._wallet_spk = _keypath_key(_WALLET_SECRET)
        self._manager: pbk.ChainstateManager | None = None
        # a temp datadir is removed even if close() is never called
        self._cleanup = (
            weakref.finalize(self, shutil.rmtree, self._datadir, ignore_errors=True)
            if self._owns_datadir
            else None
        )
        try:
            context = pbk.make_context(pbk.ChainType.REGTEST)
            options = pbk.ChainstateManagerOptions(
                context, str(self._datadir.absolute()), str((self._datadir / "blocks").absolute())
            )
            options.set_worker_threads_num(0)
            self._manager = pbk.ChainstateManager(options)
            self._load()
        except BaseException:
            self.close()
            raise

    # context manager / lifetime

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release the chainstate manager; delete the datadir if it was created here."""
        with self._lock:
            manager, self._manager = self._manager, None
            if manager is not None:
                manager.__exit__(None, None, None)  # destroys (and flushes) it now
                del manager
            if self._cleanup is not None:
                self._cleanup()  # runs once

    @property
    def closed(self) -> bool:
        return self._manager is None

    def _cm(self) -> pbk.ChainstateManager:
        if self._manager is None:
            raise ChainError("the kernel chain is closed")
        return self._manager

    @staticmethod
    def _kernel_tip(cm: pbk.ChainstateManager) -> tuple[int, bytes]:
        chain = cm.get_active_chain()
        height = int(chain.height)
        return height, bytes(chain.block_tree_entries[height].block_hash)

    def _load(self) -> None:
        """Read the chain from the kernel; rebuild the UTXO set when reopening a datadir."""
        cm = self._cm()
        chain = cm.get_active_chain()
        tip = int(chain.height)
        for height in range(tip + 1):
            raw = bytes(cm.blocks[chain.block_tree_entries[height]])
            self._times.append(struct.unpack_from("<I", raw, 68)[0])
            if height > 0:
                self._apply(height, _parse_block_txs(raw))
        self._tip_hash = bytes(chain.block_tree_entries[tip].block_hash)

    # read-only state

    @property
    def height(self) -> int:
        with self._lock:
            return self._kernel_tip(self._cm())[0]

    @property
    def tip_hash(self) -> str:
        """Hex (display order) of the tip's block hash."""
        with self._lock:
            return _display(self._kernel_tip(self._cm())[1])

    @property
    def median_time_past(self) -> int:
        """Median of the last 11 block times ending at the tip (what time locks compare to)."""
        with self._lock:
            self._cm()
            window = sorted(self._times[-11:])
            return window[len(window) // 2]

    @property
    def tip_time(self) -> int:
        with self._lock:
            self._cm()
            return self._times[-1]

    @property
    def datadir(self) -> Path:
        return self._datadir

    @property
    def wallet_script_pubkey(self) -> bytes:
        """The wallet's P2TR scriptPubKey (coinbases and change go there)."""
        return self._wallet_spk

    def utxo(self, txid: str, vout: int) -> tuple[int, bytes] | None:
        """(amount_sat, scriptPubKey) of an output unspent at the tip, else None."""
        with self._lock:
            self._cm()
            try:
                key = (bytes.fromhex(txid)[::-1], vout)
            except ValueError as e:
                raise InvalidParameter(f"txid is not hex: {txid!r}") from e
            coin = self._utxos.get(key)
            return None if coin is None else (coin.amount, coin.script_pubkey)

    def find_utxos(self, script_pubkey: bytes) -> list[tuple[str, int, int]]:
        """Every (txid hex, vout, amount_sat) unspent at the tip that pays script_pubkey."""
        with self._lock:
            self._cm()
            spk = bytes(script_pubkey)
            return sorted(
                (_display(txid), vout, coin.amount)
                for (txid, vout), coin in self._utxos.items()
                if coin.script_pubkey == spk
            )

    # mining

    def mine(
        self, txs: Sequence[bytes] = (), *, coinbase_script: bytes | None = None
    ) -> BlockResult:
        """Try to extend the tip with one block holding `txs` (raw, witness included).

        On rejection the tip is unchanged and the result carries Core's reject reason.
        """
        with self._lock:
            cm = self._cm()
            parsed = [_parse_tx(raw, i) for i, raw in enumerate(txs)]
            serialized = [bytes(tx.serialize()) for tx in parsed]
            summaries = [_summarize(tx, coinbase=False) for tx in parsed]
            height = len(self._times)
            spk = self._wallet_spk if coinbase_script is None else bytes(coinbase_script)
            witness_root = _merkle_root([bytes(32)] + [_sha256d(s) for s in serialized])
            self._attempts += 1
            cb_raw, cb_summary = _coinbase(
                height, self._attempts, spk, block_subsidy(height), witness_root
            )
            merkle_root = _merkle_root([cb_summary.txid] + [s.txid for s in summaries])
            ntime = self._times[-1] + BLOCK_INTERVAL
            header, block_hash = _grind_header(self._tip_hash, merkle_root, ntime)
            raw_block = header + _compact_size(1 + len(serialized)) + cb_raw + b"".join(serialized)
            with KERNEL_LOG.capture() as lines:
                # Raises when rejected before connection (CheckBlock/AcceptBlock); returns True
                # for some invalid blocks too. Only the tip comparison below decides.
                with suppress(pbk.ProcessBlockException):
                    cm.process_block(pbk.Block(raw_block))
                tip_height, tip_hash = self._kernel_tip(cm)
            block_hex = _display(block_hash)
            if tip_hash == block_hash:
                if tip_height != height:
                    raise ChainError(f"kernel tip at {tip_height}, expected {height}")
                self._apply(height, [cb_summary, *summaries])
                self._times.append(ntime)
                self._tip_hash = block_hash
                return BlockResult(True, tip_height, block_hex, None)
            if tip_hash != self._tip_hash:
                raise ChainError(f"kernel tip moved unexpectedly to {_display(tip_hash)}")
            reason, detail = reject_reason(lines, block_hex)
            return BlockResult(False, tip_height, block_hex, reason, detail)

    def mine_empty(self, n: int) -> None:
        """Mine n blocks holding only a coinbase (paying the wallet)."""
        if n < 0:
            raise InvalidParameter(f"n must be >= 0, got {n}")
        for _ in range(n):
            result = self.mine()
            if not result.accepted:
                raise ChainError(f"empty block rejected: {result.reason} ({result.detail})")

    def _apply(self, height: int, txs: Sequence[_TxSummary]) -> None:
        """Update the UTXO set with a block the kernel accepted (txs[0] is the coinbase)."""
        for index, tx in enumerate(txs):
            for outpoint in tx.inputs:
                if self._utxos.pop(outpoint, None) is None:
                    raise ChainError(
                        f"UTXO tracker out of sync: {_display(outpoint[0])}:{outpoint[1]} "
                        f"spent at height {height} is unknown"
                    )
                self._wallet_coins.discard(outpoint)
                self._locked.discard(outpoint)
            for vout, (amount, spk) in enumerate(tx.outputs):
                if _is_unspendable(spk):
                    continue
                outpoint = (tx.txid, vout)
                self._utxos[outpoint] = _Coin(amount, spk, height, index == 0)
                if spk == self._wallet_spk:
                    self._wallet_coins.add(outpoint)

    # wallet

    def fund(self, script_pubkey: bytes, amount_sat: int) -> tuple[str, int]:
        """Pay exactly amount_sat to script_pubkey in a mined transaction; return its outpoint.

        Mines the coinbase-maturity blocks itself when the wallet has no mature coin yet.
        """
        with self._lock:
            raw = self.build_funding_tx([(script_pubkey, amount_sat)])
            result = self.mine([raw])
            if not result.accepted:
                raise ChainError(f"funding tx rejected: {result.reason} ({result.detail})")
            return _display(bytes(CTransaction.deserialize(raw).GetTxid())), 0

    def build_funding_tx(self, outputs: Sequence[tuple[bytes, int]]) -> bytes:
        """A signed transaction paying `outputs` (in order, change last) from the wallet.

        Not mined; its inputs are reserved so later wallet transactions do not conflict with it.
        """
        with self._lock:
            self._cm()
            if not outputs:
                raise InvalidParameter("outputs must not be empty")
            for spk, amount in outputs:
                if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
                    raise InvalidAmount(f"output amount must be a non-negative int: {amount!r}")
                if not isinstance(spk, bytes | bytearray):
                    raise InvalidParameter(f"scriptPubKey must be bytes: {spk!r}")
            total = sum(amount for _, amount in outputs)
            if total > MAX_MONEY:
                raise InvalidAmount(f"outputs total {total} sat exceeds MAX_MONEY")
            coins = self._select_coins(total + FUND_FEE_SAT)
            change = sum(coin.amount for _, coin in coins) - total - FUND_FEE_SAT
            tx = CMutableTransaction(
                vin=[
                    CMutableTxIn(COutPoint(txid, n), nSequence=_SEQUENCE_RBF)
                    for (txid, n), _ in coins
                ],
                vout=[CMutableTxOut(amount, CScript(bytes(spk))) for spk, amount in outputs],
                nLockTime=0,
                nVersion=2,
            )
            if change >= CHANGE_DUST_SAT:
                tx.vout.append(CMutableTxOut(change, CScript(self._wallet_spk)))
            spent = [CTxOut(coin.amount, CScript(coin.script_pubkey)) for _, coin in coins]
            for index in range(len(coins)):
                sighash = SignatureHashSchnorr(tx, index, spent)
                signature = self._key.sign_schnorr(sighash)
                tx.wit.vtxinwit[index].scriptWitness = CScriptWitness([signature])
            self._locked.update(outpoint for outpoint, _ in coins)
            return bytes(tx.serialize())

    def _select_coins(self, need: int) -> list[tuple[Outpoint, _Coin]]:
        """Largest-first mature wallet coins covering `need`, mining blocks until there are."""
        for _ in range(MAX_FUNDING_BLOCKS + COINBASE_MATURITY):
            next_height = len(self._times)
            spendable = sorted(
                (
                    (outpoint, self._utxos[outpoint])
                    for outpoint in self._wallet_coins - self._locked
                    if not self._utxos[outpoint].coinbase
                    or self._utxos[outpoint].height + COINBASE_MATURITY <= next_height
                ),
                key=lambda item: (-item[1].amount, item[0]),
            )
            chosen: list[tuple[Outpoint, _Coin]] = []
            total = 0
            for item in spendable:
                chosen.append(item)
                total += item[1].amount
                if total >= need:
                    return chosen
            tip = next_height - 1
            self.mine_empty(max(1, COINBASE_MATURITY - tip))
        raise InvalidAmount(f"the wallet cannot gather {need} sat of mature coins")


def _parse_tx(raw: bytes, index: int) -> CTransaction:
    try:
        return CTransaction.deserialize(bytes(raw))
    except Exception as e:  # bitcointx raises several unrelated types on malformed input
        raise InvalidParameter(f"txs[{index}] is not a serialized transaction: {e}") from e


def _parse_block_txs(raw_block: bytes) -> list[_TxSummary]:
    """Summaries of a serialized block's transactions (coinbase first)."""
    from io import BytesIO

    stream = BytesIO(raw_block)
    stream.seek(80)
    first = stream.read(1)[0]
    if first < 0xFD:
        count = first
    else:
        size = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
        count = int.from_bytes(stream.read(size), "little")
    return [
        _summarize(CTransaction.stream_deserialize(stream), coinbase=i == 0) for i in range(count)
    ]
