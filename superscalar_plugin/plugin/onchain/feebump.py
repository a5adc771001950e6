"""Getting an exit's transactions into blocks when fees rise.

- CPFP: a child spends the tx's P2A anchor plus wallet coins (`fundpsbt`); its fee is computed
  from the child's real size (its inputs as lightningd's wallet picked them), so the package
  reaches the rate asked for. A later, higher bump replaces the child on the anchor and pays at
  least the old child's fee plus the incremental relay fee on its own size (BIP125 rules).
- Budget: the latest children of one factory's exit together pay at most
  `superscalar-max-exit-fee-sat`; a bump above what is left is cut down or given up, logged.
- Packages: lightningd's `sendrawtransaction` has no package relay, so a parent below the
  mempool's minimum fee cannot enter alone. When the node's bitcoind is reachable (found from
  lightningd's `listconfigs`: `bitcoin-rpcuser`/`-rpcpassword`/`-rpcconnect`/`-rpcport`, or the
  cookie in `bitcoin-datadir`), parent and child go in together through `submitpackage`. When it
  is not, that is logged once and the plain path stays.

Owns: nothing persistent (the exit's bump record is the caller's). Chain thread only.
May call: lightningd's `fundpsbt`, `signpsbt`, `sendpsbt`, `unreserveinputs`, `listconfigs`;
bitcoind's `submitpackage`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ...chain.bitcoind import BitcoindRPC
from ...engine.exit import Bump
from ..lightningd import psbt
from ..lightningd.runtime import Rpc, why

log = logging.getLogger("superscalar")

INCREMENTAL_RELAY_SAT_PER_VB = 1  # bitcoind's default -incrementalrelayfee
CHANGE_DUST_SAT = 330  # the child's change must stay above dust for any wallet script
FIRST_GUESS_VSIZE = 11 + 41 + 68 + 31 + 1  # overhead, anchor input, a P2WPKH input, change
DEFAULT_RPC_PORTS = {
    "bitcoin": 8332,
    "testnet": 18332,
    "testnet4": 48332,
    "signet": 38332,
    "regtest": 18443,
}
COOKIE_SUBDIR = {"bitcoin": "", "testnet": "testnet3", "testnet4": "testnet4", "signet": "signet"}


def _config(configs: dict[str, Any], name: str) -> Any:
    entry = configs.get(name)
    if not isinstance(entry, dict):
        return None
    return entry.get("value_str", entry.get("value_int"))


def bitcoind_from_configs(configs: dict[str, Any]) -> BitcoindRPC:
    """The node's bitcoind, as lightningd's bcli reaches it (`listconfigs` result's `configs`)."""
    network = str(_config(configs, "network") or "bitcoin")
    host = str(_config(configs, "bitcoin-rpcconnect") or "127.0.0.1")
    port = _config(configs, "bitcoin-rpcport") or DEFAULT_RPC_PORTS.get(network)
    if port is None:
        raise ValueError(f"no bitcoind RPC port known for network {network}")
    user, password = _config(configs, "bitcoin-rpcuser"), _config(configs, "bitcoin-rpcpassword")
    if not user or not password:
        datadir = Path(str(_config(configs, "bitcoin-datadir") or Path.home() / ".bitcoin"))
        cookie = datadir / COOKIE_SUBDIR.get(network, network) / ".cookie"
        try:
            user, password = cookie.read_text().strip().split(":", 1)
        except (OSError, ValueError) as e:
            raise ValueError(f"no bitcoin-rpcuser/password and no readable {cookie}: {e}") from e
    return BitcoindRPC(f"http://{host}:{port}", str(user), str(password), timeout=30)


class FeeBumper:
    def __init__(self, rpc: Rpc) -> None:
        self._rpc = rpc
        self._told_unreachable = False

    # --- CPFP -----------------------------------------------------------------------------------

    def cpfp(self, bump: Bump, previous_fee: int, budget_left: int) -> int | None:
        """Send a child for `bump` (replacing ours of `previous_fee`, if any): its fee, or None."""
        built = self._build(bump, previous_fee, budget_left)
        if built is None:
            return None
        final, fee, funded = built
        try:
            self._rpc.call("sendpsbt", {"psbt": final})
        except Exception as e:
            log.warning("CPFP of %s: sendpsbt refused the child: %s", bump.txid[:16], why(e))
            self._unreserve(funded)
            return None
        log.info(
            "CPFP: bumped %s to %d sat/kvB (child fee %d sat)",
            bump.txid[:16],
            bump.target_rate_kvb,
            fee,
        )
        return fee

    def package(self, parent: bytes, bump: Bump, previous_fee: int, budget_left: int) -> int | None:
        """Submit parent + child through bitcoind's `submitpackage`: the child's fee, or None
        (no bitcoind reachable, over budget, or refused: all logged)."""
        bitcoind = self._bitcoind()
        if bitcoind is None:
            return None
        built = self._build(bump, previous_fee, budget_left)
        if built is None:
            return None
        final, fee, funded = built
        try:
            child = psbt.extract(final)
            res = bitcoind.call("submitpackage", [parent.hex(), child.hex()])
            if res.get("package_msg") != "success":
                raise ValueError(f"{res.get('package_msg')}: {res.get('tx-results')}")
        except Exception as e:
            log.warning("package of %s and its child refused: %s", bump.txid[:16], e)
            self._unreserve(funded)
            return None
        log.warning(
            "package: %s entered with a child at %d sat/kvB (child fee %d sat)",
            bump.txid[:16],
            bump.target_rate_kvb,
            fee,
        )
        return fee

    def _build(
        self, bump: Bump, previous_fee: int, budget_left: int
    ) -> tuple[str, int, str] | None:
        """(signed child PSBT, its fee, the funded PSBT to unreserve on failure), or None."""
        funded = self._fund(self._fee(bump, previous_fee, FIRST_GUESS_VSIZE))
        if funded is None:
            return None
        psbt_b64, change = funded
        try:
            child = psbt.add_anchor_input(psbt_b64, bump.anchor, bump.anchor_sat, change)
            fee = self._fee(bump, previous_fee, psbt.signed_vsize(child))
            if fee > budget_left:
                fee = budget_left
                if fee <= previous_fee or fee <= 0:
                    raise ValueError(f"the exit fee budget is spent ({budget_left} sat left)")
                log.warning(
                    "CPFP of %s: cut to the %d sat left in the exit fee budget", bump.txid[:16], fee
                )
            utxos = psbt.input_utxos(child)
            outs = psbt.unsigned_tx(child).outputs
            amount = (
                sum(u.amount for u in utxos)
                - fee
                - sum(o.amount for i, o in enumerate(outs) if i != change)
            )
            if amount < CHANGE_DUST_SAT:
                raise ValueError(f"wallet coins too small for a {fee}-sat child")
            child = psbt.with_output_amount(child, change, amount)
            signed = self._rpc.call("signpsbt", {"psbt": child})["signed_psbt"]
            anchor_index = len(psbt.unsigned_tx(signed).inputs) - 1
            return psbt.finalize_anchor(signed, anchor_index), fee, psbt_b64
        except Exception as e:
            log.warning("CPFP of %s not built: %s", bump.txid[:16], why(e))
            self._unreserve(psbt_b64)
            return None

    @staticmethod
    def _fee(bump: Bump, previous_fee: int, child_vsize: int) -> int:
        """What the child pays: the package's target, and to replace our previous child, more
        than it by the incremental relay fee on the new child's size."""
        fee = bump.child_fee(child_vsize)
        if previous_fee:
            fee = max(fee, previous_fee + INCREMENTAL_RELAY_SAT_PER_VB * child_vsize)
        return max(fee, 1)

    def _fund(self, fee_guess: int) -> tuple[str, int] | None:
        try:
            funded = self._rpc.call(
                "fundpsbt",
                {
                    "satoshi": fee_guess,
                    "feerate": "253perkw",
                    "startweight": (10 + 41 + 31) * 4 + 1,
                    "reserve": 6,
                    "excess_as_change": True,
                },
            )
        except Exception as e:
            log.warning("CPFP: no wallet coins for a child of about %d sat: %s", fee_guess, why(e))
            return None
        change = funded.get("change_outnum")
        if change is None:
            log.warning("CPFP: the wallet's coins leave no change output to carry the anchor")
            self._unreserve(funded["psbt"])
            return None
        return str(funded["psbt"]), int(change)

    def _unreserve(self, psbt_b64: str) -> None:
        try:
            self._rpc.call("unreserveinputs", {"psbt": psbt_b64})
        except Exception as e:
            log.info("unreserveinputs: %s", why(e))

    # --- the node's bitcoind, for packages -----------------------------------------------------

    def _bitcoind(self) -> BitcoindRPC | None:
        """The node's bitcoind if it answers now (looked up each time it is needed: rare)."""
        try:
            configs = self._rpc.call("listconfigs")["configs"]
            bitcoind = bitcoind_from_configs(configs)
            bitcoind.call("getnetworkinfo")
        except Exception as e:
            if not self._told_unreachable:
                self._told_unreachable = True
                log.warning(
                    "package relay unavailable (cannot reach the node's bitcoind: %s): a tree "
                    "tx below the mempool's minimum fee waits until the minimum falls",
                    e,
                )
            return None
        return bitcoind
