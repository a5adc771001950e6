"""The plugin's configuration (from lightningd's options) and the limits every role shares."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...engine.tree import FactoryParams

MIN_CHANNEL_SAT = 20_000  # a floor above Core Lightning's default min-capacity-sat (10,000)
FACTORY_PUSH_MSAT = 1000
# What a DW update's new channel pushes to its client: the reserve floor lightningd keeps a
# client at (546 sat, the dust limit; README, "Core Lightning facts"), which no payment can move
# out of the old channel. Never more: lightningd v26.06.6 aborts when a zero-conf channel's
# funding confirms while its fundee holds less than it was pushed (`updates/swap.py`), and the
# reserve keeps a client from ever holding less than this.
UPDATE_PUSH_MSAT = 546_000
# The reserve the LSP asks a client to keep in a factory channel: none, so a client can move its
# whole balance into the next factory and hand over its key with nothing left behind.
FACTORY_RESERVE_SAT = 0
# static_remotekey (12) + scid_alias (46) + zeroconf (50), no anchors: a factory client is
# typically a new user with no on-chain coin, and only non-anchor channels let it claim an HTLC
# after a force close without one (their HTLC transactions carry their own fee; anchor channels'
# are zero-fee and need wallet inputs).
FACTORY_CHANNEL_TYPE = (12, 46, 50)


@dataclass(frozen=True)
class Config:
    accept_from: frozenset[str] = frozenset()  # LSP node ids we join factories of ("any": all)
    max_ewt: int = 2016
    max_fee_rate_kvb: int = 50_000
    min_fee_rate_kvb: int = 2_000  # a client's floor: a cheaper tree may be stuck in a fee spike
    # A client's floor on `stock_delay`: the blocks a sale has to confirm behind a stock output
    # that confirmed near T before L alone may take that stock (engine `sale`).
    min_stock_delay: int = 144
    max_exit_fee_sat: int = 50_000  # CPFP budget of one factory's exit
    fee_rate_kvb: int = 2_000
    params: FactoryParams = field(default_factory=FactoryParams)
    lifetime_blocks: int = 4320  # ~30 days until the factory's timeout T
    ceremony_timeout: float = 60.0  # seconds a ceremony waits for any peer
    exit_margin: int = 12  # blocks of safety on top of the EWT before an exit starts
    funding_feerate: str = "normal"
    # The ladder: in the last `dying_blocks` before T a factory's clients move to a successor,
    # one created every `ladder_every` blocks (0: only by hand, with factory-migrate).
    ladder_every: int = 0
    dying_blocks: int = 432
    # Liquidity sales: the LSP's price (base + ppm of the amount), and the most a buyer pays
    # without being told a price (ppm of the amount, at least BUY_MIN_FEE_CAP_SAT).
    sale_fee_base_sat: int = 1000
    sale_fee_ppm: int = 10_000
    max_buy_fee_ppm: int = 20_000
    # A client whose node's database cannot be read for its channel's funding keys (PostgreSQL
    # without psycopg2) joins only if the operator accepts trusting the LSP for that script.
    trust_channel_script: bool = False
    # Moves out of a factory (migration, close): the most the LSP may keep as its forwarding fee
    # on one move, and the confirmations the target's funding needs before our balance moves.
    max_move_fee_sat: int = 100
    move_min_depth: int = 3


BUY_MIN_FEE_CAP_SAT = 2000
TRUST_CHANNEL_SCRIPT_HELP = (
    "Client: join factories even if this node's database cannot be read for our channel's"
    " funding keys (PostgreSQL without psycopg2), trusting the LSP for our channel's script"
)
