"""Red-team attacks, second round (branch `red2`): a hostile LSP, or a hostile co-client, against
the real plugin processes (tests/harness, the fuzz_protocol `World` for message filters).

Each test asserts that the victim keeps its money. Both attacks succeeded when found (the burn was
valid from T+1 for whoever stored it signed); the burn now carries a relative lock of
`stock_delay` (engine `sale.burn_sequence`), so consensus keeps it out until the LSP's own stock
path opens and the absent buyer, back, publishes its sale.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from fuzz_protocol import flows
from fuzz_protocol.chainview import output_of, verify_inputs
from fuzz_protocol.invariant import RECORDS, _with_sig
from fuzz_protocol.world import label

from adversarial.plugin_hostile import unpig
from adversarial.test_red_team import (
    _funded,
    _mine_to,
    _status,
    _world,
    sold_and_paid,
)
from harness.bitcoin import CTransaction, b2lx
from harness.node import FakeNode


def _records(node: FakeNode, kind: str) -> list[dict[str, Any]]:
    with node.datastore.lock:
        raws = [v for k, (v, _) in node.datastore.entries.items() if k[:2] == RECORDS]
    return [r for r in (json.loads(raw) for raw in raws) if r.get("kind") == kind]


def _signed_burns(node: FakeNode, kind: str) -> dict[str, tuple[CTransaction, tuple[str, int]]]:
    """sale txid -> (its burn with the final signature, the stock outpoint both spend), from what
    `node` stores (the LSP, the aggregator, stores every burn signed)."""
    out = {}
    for rec in _records(node, kind):
        for s in rec.get("sales", []):
            if s.get("burn_sig"):
                burn = _with_sig(bytes.fromhex(s["burn_tx"]), bytes.fromhex(s["burn_sig"]))
                sale = CTransaction.deserialize(bytes.fromhex(s["sale_tx"]))
                out[b2lx(sale.GetTxid())] = (burn, (s["stock_txid"], int(s["stock_vout"])))
    return out


def _bip68_final(tx: CTransaction, parent_height: int, height: int) -> bool:
    """BIP68 as Bitcoin Core applies it (the harness chain enforces no lock): may `tx`, whose
    one parent confirmed at `parent_height`, go into the block at `height`?"""
    if tx.nVersion < 2:
        return True
    for i in tx.vin:
        if i.nSequence & (1 << 31) or i.nSequence & (1 << 22):  # disabled, or time-based
            continue
        if height - parent_height < i.nSequence & 0xFFFF:
            return False
    return True


def test_the_lsp_cannot_burn_an_absent_buyers_complete_sale_at_t_plus_1(tmp_path: Path) -> None:
    """Hostile LSP. The last round's fix stopped honest co-signers from burning a complete sale
    whose buyer is away before the LSP's own stock path opens (T+1 and `stock_delay` = 144 blocks
    after the stock confirmed): "a complete sale held by an absent buyer can still confirm until
    then". But the burn itself is valid from T+1 (nLockTime T, key path, nSequence with no
    relative lock), and the LSP, the MuSig2 aggregator, stores it signed: nothing but honesty
    keeps the LSP from publishing it.

    The LSP sells c0 a channel (factory-sell), sends the sale's last signature to c0 only (never
    to the co-signer c1), pays 30,000 sat into the sale channel (c0's money now; the LSP keeps
    the matching incoming payment elsewhere), then stops cooperating. c0 is away from before its
    own exit until shortly after T. c1's own exit puts the leaf, and the stock, on chain before T.
    At the tip T the LSP broadcasts the stored burn (the whole stock to miners, fee beyond any
    sale's: it wins any replacement race). c0 comes back at T+2, well inside the 144 blocks the
    design promises it, and its sale can never confirm: its 30,000 sat are gone."""
    world = _world(tmp_path)
    c0, c1 = world.clients
    inner = world._intercept

    def withhold_sale_sig(src: FakeNode, dst: FakeNode, msg: str) -> str | None:
        if src is world.lsp and dst is c1 and label(unpig(msg)) == "SaleStep.SALE_SIG":
            return None
        return inner(src, dst, msg)

    world.net.intercept = withhold_sale_sig
    try:
        inst = _funded(world)
        sale_txid = sold_and_paid(world, inst)
        burns = _signed_burns(world.lsp, "lsp")
        assert sale_txid in burns, burns.keys()
        burn, stock_op = burns[sale_txid]
        timeout = int(_status(c1, inst)["timeout_height"])
        world.lsp.stop()  # hostile from here on: publishes nothing it need not
        c0.stop()  # away
        _mine_to(world, timeout)
        time.sleep(2.0)
        chain = world.net.chain
        with chain.cond:
            stock_rec = chain.txs.get(stock_op[0])
            assert stock_rec is not None and stock_rec.height is not None, "stock not on chain"
            stock_out = output_of(stock_rec.tx, stock_op[1])
            assert stock_out is not None
            spender = chain.spent.get(stock_op)
        # The burn is valid now: its signature checks against the stock output (Bitcoin Core's
        # script interpreter), and its nLockTime T is final in the next block T+1.
        assert verify_inputs(burn, [stock_out])
        assert burn.nLockTime <= timeout and chain.height >= timeout
        # The defence: the burn waits `stock_delay` after the stock (BIP68), as the LSP's own
        # path does, so no block may hold it now; a real node would refuse the broadcast.
        final = _bip68_final(burn, stock_rec.height, chain.height + 1)
        assert not final, "the burn is valid at T+1"
        if spender is None and final:
            chain.broadcast(burn, by="lsp")  # the hostile LSP's move
        world.net.mine(1)
        time.sleep(0.5)
        c0.start()  # back at T+2: 143 blocks before the LSP's own stock path would open
        for _ in range(4):
            world.net.mine(1)
            time.sleep(0.5)
        with chain.cond:
            spender = chain.spent.get(stock_op)
        assert spender == sale_txid, f"c0's complete sale lost its stock to {spender} (the burn)"
    finally:
        world.net.stop()


def test_a_co_client_cannot_burn_an_absent_buyers_complete_sale(tmp_path: Path) -> None:
    """Hostile co-client c1, honest LSP (online throughout). The LSP sells c0 a channel and pays
    30,000 sat into it; every co-signer gets the sale complete. c0 is away from before its exit
    until shortly after T. c1 exits (its leaf and the stock confirm before T) but never publishes
    c0's sale (the only honest duty it skips; the LSP's plugin does not publish sales at all),
    and at the tip T broadcasts the burn it stores signed. Block T+1 burns the stock: c0's
    30,000 sat and the LSP's 10,000 sat in the sale channel, and the LSP's 60,000 sat change, go
    to miners. c1 pays nothing for it."""
    world = _world(tmp_path)
    c0, c1 = world.clients
    net = world.net
    withheld: set[str] = set()
    real_broadcast = net.broadcast

    def hostile_c1_broadcast(tx: CTransaction, by: FakeNode | None = None) -> Any:
        if by is c1 and b2lx(tx.GetTxid()) in withheld:
            raise ValueError("hostile c1 does not publish the sale")
        return real_broadcast(tx, by)

    net.broadcast = hostile_c1_broadcast  # type: ignore[method-assign]
    try:
        inst = _funded(world)
        sale_txid = sold_and_paid(world, inst)  # c0 now owns 30,000 sat of it
        withheld.add(sale_txid)
        flows._wait(
            lambda: (
                [bool(e.get("sale_sig")) for r in _records(c1, "client") for e in r["sales"]]
                == [True]
            ),
            10,
        )  # the honest LSP sent c1 the sale's signature too: c1 could publish the sale
        burns = _signed_burns(c1, "client")  # c1's own record: the burn, signed
        assert sale_txid in burns, burns.keys()
        burn, stock_op = burns[sale_txid]
        timeout = int(_status(c1, inst)["timeout_height"])
        c0.stop()  # away
        _, err = flows._call(c1, "factory-exit", {"instance": inst})
        assert err is None, err
        _mine_to(world, timeout)
        time.sleep(2.0)
        chain = net.chain
        with chain.cond:
            stock_rec = chain.txs.get(stock_op[0])
            assert stock_rec is not None and stock_rec.height is not None, "stock not on chain"
            stock_out = output_of(stock_rec.tx, stock_op[1])
            assert stock_out is not None
            spender = chain.spent.get(stock_op)
        assert verify_inputs(burn, [stock_out])
        assert burn.nLockTime <= timeout and chain.height >= timeout
        final = _bip68_final(burn, stock_rec.height, chain.height + 1)
        assert not final, "the burn is valid at T+1"
        if spender is None and final:
            real_broadcast(burn, c1)  # the hostile co-client's move
        net.mine(1)
        time.sleep(0.5)
        c0.start()  # back at T+2
        for _ in range(4):
            net.mine(1)
            time.sleep(0.5)
        with chain.cond:
            spender = chain.spent.get(stock_op)
        assert spender == sale_txid, f"c0's complete sale lost its stock to {spender} (the burn)"
    finally:
        net.stop()
