"""A tiny onchain wallet for the fake node: confirmed UTXOs on P2WPKH scripts, reservations by
block height like lightningd's (`reserved_til`), PSBTs built with python-bitcointx, and a
fake signer (a dummy witness: the fake never validates scripts)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from .bitcoin import (
    CMutableTransaction,
    CMutableTxIn,
    CMutableTxOut,
    COutPoint,
    CScript,
    CScriptWitness,
    CTransaction,
    CTxOut,
    PartiallySignedTransaction,
    lx,
    p2tr_script,
    p2wpkh_script,
    privkey_from_seed,
    pubkey_of,
    script_to_address,
    sha256,
    txid_hex,
)
from .chain import Chain
from .errors import FUND_CANNOT_AFFORD, JSONRPC2_INVALID_PARAMS, RpcFail

# Weights as lightningd counts them: an input's non-witness part (outpoint, scriptSig length,
# nSequence) times 4, plus a P2WPKH witness (items count, 73-byte signature, 33-byte key).
INPUT_NONWITNESS_WEIGHT = (32 + 4 + 1 + 4) * 4
P2WPKH_WITNESS_WEIGHT = 1 + 1 + 73 + 1 + 33
P2TR_OUTPUT_WEIGHT = (8 + 1 + 34) * 4
DUST_LIMIT_SAT = 546
DEFAULT_RESERVE = 72
SEQUENCE = 0xFFFFFFFD
DUMMY_SIGNATURE = bytes([0x30, 0x44]) + bytes(68) + bytes([0x01])


def tx_fee(feerate_perkw: int, weight: int) -> int:
    return feerate_perkw * weight // 1000


@dataclass
class Utxo:
    txid: str
    vout: int
    amount_sat: int
    script: bytes
    key_index: int
    height: int | None  # None: unconfirmed
    reserved_til: int = 0
    spent_by: str | None = None

    @property
    def outpoint(self) -> tuple[str, int]:
        return (self.txid, self.vout)

    @property
    def address(self) -> str | None:
        return script_to_address(self.script)

    def reserved(self, height: int) -> bool:
        return self.reserved_til > height


class Wallet:
    def __init__(self, seed: bytes, chain: Chain) -> None:
        self.seed = seed
        self.chain = chain
        self.lock = threading.RLock()
        self.utxos: dict[tuple[str, int], Utxo] = {}
        self._scripts: dict[bytes, int] = {}
        self._next_key = 0
        self._fake_funding = 0

    # -- keys and addresses -------------------------------------------------------------------
    def _new_key(self) -> tuple[int, bytes]:
        with self.lock:
            index = self._next_key
            self._next_key += 1
        pub = pubkey_of(privkey_from_seed(self.seed, "wallet", index.to_bytes(4, "big")))
        return index, pub

    def new_script(self, kind: str = "p2tr") -> tuple[int, bytes, bytes]:
        """(key index, P2WPKH script, P2TR script): both registered as ours."""
        index, pub = self._new_key()
        wpkh, tr = p2wpkh_script(pub), p2tr_script(pub[1:])
        with self.lock:
            self._scripts[wpkh] = index
            self._scripts[tr] = index
        return index, wpkh, tr

    def owns(self, script: bytes) -> bool:
        with self.lock:
            return bytes(script) in self._scripts

    # -- UTXOs ----------------------------------------------------------------------------------
    def add_fake_utxo(self, amount_sat: int, height: int | None) -> Utxo:
        """A UTXO of a funding transaction that exists only in this wallet's imagination."""
        index, wpkh, _ = self.new_script()
        with self.lock:
            n = self._fake_funding
            self._fake_funding += 1
        txid = sha256(self.seed + b"fake funding" + n.to_bytes(4, "big"))[::-1].hex()
        utxo = Utxo(txid, 0, amount_sat, wpkh, index, height)
        with self.lock:
            self.utxos[utxo.outpoint] = utxo
        return utxo

    def on_broadcast(self, tx: CTransaction) -> None:
        """A transaction entered the mempool: spend our inputs, learn our outputs."""
        txid = txid_hex(tx)
        with self.lock:
            for txin in tx.vin:
                op = (str(txin.prevout.hash[::-1].hex()), int(txin.prevout.n))
                if op in self.utxos:
                    self.utxos[op].spent_by = txid
                    self.utxos[op].reserved_til = 0
            for vout, out in enumerate(tx.vout):
                script = bytes(out.scriptPubKey)
                if script in self._scripts and (txid, vout) not in self.utxos:
                    self.utxos[(txid, vout)] = Utxo(
                        txid, vout, int(out.nValue), script, self._scripts[script], None
                    )

    def on_block(self, height: int, txids: list[str]) -> None:
        wanted = set(txids)
        with self.lock:
            for utxo in self.utxos.values():
                if utxo.height is None and utxo.txid in wanted:
                    utxo.height = height

    def spendable(self, minconf: int) -> list[Utxo]:
        height = self.chain.height
        with self.lock:
            return [
                u
                for u in self.utxos.values()
                if u.spent_by is None
                and not u.reserved(height)
                and (minconf == 0 or (u.height is not None and height - u.height + 1 >= minconf))
            ]

    # -- reservations ---------------------------------------------------------------------------
    def _reservation(self, utxo: Utxo, was_reserved: bool) -> dict[str, Any]:
        return {
            "txid": utxo.txid,
            "vout": utxo.vout,
            "was_reserved": was_reserved,
            "reserved": True,
            "reserved_to_block": utxo.reserved_til,
        }

    def reserve_utxos(self, utxos: list[Utxo], reserve: int) -> list[dict[str, Any]]:
        height = self.chain.height
        out = []
        with self.lock:
            for u in utxos:
                was = u.reserved(height)
                u.reserved_til = (u.reserved_til if was else height) + reserve
                out.append(self._reservation(u, was))
        return out

    def our_inputs(self, psbt: PartiallySignedTransaction) -> list[tuple[int, Utxo]]:
        found = []
        with self.lock:
            for i, txin in enumerate(psbt.unsigned_tx.vin):
                op = (txin.prevout.hash[::-1].hex(), int(txin.prevout.n))
                if op in self.utxos:
                    found.append((i, self.utxos[op]))
        return found

    def reserveinputs(
        self, psbt: PartiallySignedTransaction, exclusive: bool, reserve: int
    ) -> list[dict[str, Any]]:
        height = self.chain.height
        with self.lock:
            ours = self.our_inputs(psbt)
            for _, u in ours:
                if u.spent_by is not None:
                    raise RpcFail(JSONRPC2_INVALID_PARAMS, f"{u.txid}:{u.vout} already spent")
                if exclusive and u.reserved(height):
                    raise RpcFail(JSONRPC2_INVALID_PARAMS, f"{u.txid}:{u.vout} already reserved")
            return self.reserve_utxos([u for _, u in ours], reserve)

    def unreserveinputs(
        self, psbt: PartiallySignedTransaction, reserve: int
    ) -> list[dict[str, Any]]:
        height = self.chain.height
        out: list[dict[str, Any]] = []
        with self.lock:
            for _, u in self.our_inputs(psbt):
                was = u.reserved(height)
                if not was:
                    out.append(
                        {"txid": u.txid, "vout": u.vout, "was_reserved": False, "reserved": False}
                    )
                    continue
                if u.reserved_til <= height + reserve:
                    u.reserved_til = 0
                else:
                    u.reserved_til -= reserve
                entry: dict[str, Any] = {
                    "txid": u.txid,
                    "vout": u.vout,
                    "was_reserved": True,
                    "reserved": u.reserved(height),
                }
                if u.reserved(height):
                    entry["reserved_to_block"] = u.reserved_til
                out.append(entry)
        return out

    # -- PSBTs ----------------------------------------------------------------------------------
    def build_psbt(
        self,
        *,
        amount_sat: int | None,
        feerate_perkw: int,
        startweight: int,
        candidates: list[Utxo],
        use_all_candidates: bool,
        reserve: int,
        locktime: int | None,
        min_witness_weight: int,
        excess_as_change: bool,
    ) -> dict[str, Any]:
        """fundpsbt/utxopsbt. `amount_sat` None means "all"."""
        input_weight = INPUT_NONWITNESS_WEIGHT + max(P2WPKH_WITNESS_WEIGHT, min_witness_weight)
        chosen: list[Utxo] = []
        total = 0
        weight = startweight
        for u in candidates:
            if (
                not use_all_candidates
                and amount_sat is not None
                and chosen
                and total >= amount_sat + tx_fee(feerate_perkw, weight)
            ):
                break
            chosen.append(u)
            total += u.amount_sat
            weight += input_weight
        fee = tx_fee(feerate_perkw, weight)
        need = (amount_sat or 0) + fee
        if not chosen or total < need:
            short = need - total
            raise RpcFail(
                FUND_CANNOT_AFFORD,
                f"Could not afford {amount_sat if amount_sat is not None else 'all'}sat using all "
                f"{len(candidates)} available UTXOs: {short}sat short",
            )
        excess = total - need
        outputs: list[CMutableTxOut] = []
        change_outnum = None
        if excess_as_change:
            change_fee = tx_fee(feerate_perkw, P2TR_OUTPUT_WEIGHT)
            if excess - change_fee >= DUST_LIMIT_SAT:
                _, _, tr = self.new_script()
                outputs.append(CMutableTxOut(excess - change_fee, CScript(tr)))
                change_outnum = 0
                weight += P2TR_OUTPUT_WEIGHT
                excess = 0
        tx = CMutableTransaction(
            [CMutableTxIn(COutPoint(lx(u.txid), u.vout), nSequence=SEQUENCE) for u in chosen],
            outputs,
            nLockTime=self.chain.height if locktime is None else locktime,
            nVersion=2,
        )
        psbt = PartiallySignedTransaction(unsigned_tx=tx)
        for i, u in enumerate(chosen):
            psbt.set_utxo(CTxOut(u.amount_sat, CScript(u.script)), i)
        result: dict[str, Any] = {
            "psbt": psbt.to_base64(),
            "feerate_per_kw": feerate_perkw,
            "estimated_final_weight": weight,
            "excess_msat": excess * 1000,
        }
        if change_outnum is not None:
            result["change_outnum"] = change_outnum
        if reserve > 0:
            result["reservations"] = self.reserve_utxos(chosen, reserve)
        return result

    def sign(self, psbt: PartiallySignedTransaction, signonly: list[int] | None) -> int:
        """Fake-sign our (reserved) inputs: a dummy P2WPKH witness. Returns how many."""
        height = self.chain.height
        signed = 0
        with self.lock:
            ours = self.our_inputs(psbt)
            for i, u in ours:
                if signonly is not None and i not in signonly:
                    continue
                if u.spent_by is not None:
                    raise RpcFail(JSONRPC2_INVALID_PARAMS, f"UTXO {u.txid}:{u.vout} already spent")
                if not u.reserved(height):
                    raise RpcFail(
                        JSONRPC2_INVALID_PARAMS,
                        f"Aborting PSBT signing. UTXO {u.txid}:{u.vout} is not reserved",
                    )
                pub = pubkey_of(
                    privkey_from_seed(self.seed, "wallet", u.key_index.to_bytes(4, "big"))
                )
                inp = psbt.inputs[i]
                if inp.witness_utxo is None:
                    psbt.set_utxo(CTxOut(u.amount_sat, CScript(u.script)), i)
                inp.final_script_witness = CScriptWitness([DUMMY_SIGNATURE, pub])
                signed += 1
        if signonly is not None and any(i not in {j for j, _ in ours} for i in signonly):
            raise RpcFail(JSONRPC2_INVALID_PARAMS, "signonly: not all inputs could be signed")
        if signed == 0:
            raise RpcFail(JSONRPC2_INVALID_PARAMS, "No wallet inputs to sign")
        return signed

    def listfunds_outputs(self, include_spent: bool) -> list[dict[str, Any]]:
        height = self.chain.height
        out: list[dict[str, Any]] = []
        with self.lock:
            for u in self.utxos.values():
                if u.spent_by is not None and not include_spent:
                    continue
                entry: dict[str, Any] = {
                    "txid": u.txid,
                    "output": u.vout,
                    "amount_msat": u.amount_sat * 1000,
                    "scriptpubkey": u.script.hex(),
                }
                if u.address:
                    entry["address"] = u.address
                if u.spent_by is not None:
                    entry["status"] = "spent"
                elif u.height is None:
                    entry["status"] = "unconfirmed"
                else:
                    entry["status"] = "confirmed"
                if u.height is not None:
                    entry["blockheight"] = u.height
                entry["reserved"] = u.reserved(height)
                if u.reserved(height):
                    entry["reserved_to_block"] = u.reserved_til
                out.append(entry)
        return out
