"""Message routing: parse a peer's factory message, find whose factory it is, dispatch.

Owns: nothing. The `custommsg` hook (dispatch thread) filters by type and queues the message for
the worker; a `channel_in_factory` record is applied at once, because the `openchannel` hook that
follows it must already see it. On the worker: the bLIP-56 handshake goes to `peers`; a message
for a factory this node runs as LSP goes to `lsp` (which checks the sender is one of its
clients), any other to `client` (which checks the sender is the factory's LSP). A message that
breaks a ceremony aborts that factory, naming the peer; the worker stays alive. Once a factory
is funded, its end is `winddown`'s (the LSP: keys, refusals) and `move`'s (a client: MOVE), and
its liquidity sales are `sales`'/`payments`' (the LSP: BUY, sale steps from its clients) and
`cosign`'s (a client: QUOTE, OFFER, SALE, sale steps from its LSP).
May call: `peers`, `opens`, `lsp`, `client`, `winddown`, `move`, `sales`, `payments`, `cosign`,
`records` (read only).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ...engine import blip56, protocol, store
from ...engine.errors import CeremonyError, MuSigError, WireError
from ..creation.client import ClientRole
from ..creation.lsp import LspRole
from ..creation.opens import ChannelOpens
from ..lifecycle.move import ClientMover
from ..lifecycle.winddown import WindDown
from ..sales.cosign import Cosigner
from ..sales.payments import Payments
from ..sales.seller import SalesRole
from ..updates.client import UpdateClient
from ..updates.lsp import UpdateLsp
from .peers import Peers
from .ratelimit import LogLimiter
from .records import Records

log = logging.getLogger("superscalar")
peer_log = LogLimiter(log)  # what a peer can trigger at will: once a minute per peer

IN_FACTORY = bytes([protocol.PayloadType.CHANNEL_IN_FACTORY])
SALE_TO_CLIENT = (protocol.Quote, protocol.Offer, protocol.SaleProposal, protocol.SaleStep)


class Router:
    def __init__(
        self,
        peers: Peers,
        opens: ChannelOpens,
        lsp: LspRole,
        client: ClientRole,
        submit: Callable[[Callable[[], None]], None],
        ends: tuple[Records, WindDown, ClientMover],
        sales: tuple[SalesRole, Payments, Cosigner],
        updates: tuple[UpdateLsp, UpdateClient],
    ) -> None:
        self._peers = peers
        self._opens = opens
        self._lsp = lsp
        self._client = client
        self._submit = submit
        self._records, self._wind_down, self._mover = ends
        self._sales, self._payments, self._cosign = sales
        self._update_lsp, self._update_client = updates

    def on_custommsg(self, peer: str, payload_hex: str) -> None:
        """From the custommsg hook (dispatch thread): filter by type and queue; never blocks."""
        try:
            msg = bytes.fromhex(payload_hex)
        except ValueError:
            peer_log.warning(peer, "custommsg from %s is not hex", peer)
            return
        if len(msg) < 2 or int.from_bytes(msg[:2], "big") != blip56.FACTORY_MESSAGE_TYPE:
            return  # e.g. lightningd's own peer_storage
        if self._in_factory_record(peer, msg):
            return
        self._submit(lambda: self.on_factory_message(peer, msg))

    def _in_factory_record(self, peer: str, msg: bytes) -> bool:
        """Apply a `channel_in_factory` at once (dispatch thread). Cheap: a parse and a
        dictionary update."""
        try:
            parsed = blip56.decode_factory_message(msg)
            if not isinstance(parsed, blip56.Piggyback) or parsed.payload[:1] != IN_FACTORY:
                return False
            payload = protocol.decode(parsed.payload)
        except WireError:
            return False  # the worker logs and drops it
        assert isinstance(payload, protocol.InFactory)
        self._opens.announced(peer, payload.instance_id.hex())
        return True

    def on_factory_message(self, peer: str, msg: bytes) -> None:
        """On the worker: decode, then hand to the role that runs the factory."""
        try:
            parsed = blip56.decode_factory_message(msg)
            if isinstance(parsed, blip56.SupportedProtocols):
                if blip56.SUPERSCALAR_PROTOCOL_ID in parsed.protocol_ids:
                    self._peers.announced(peer)
                return
            if parsed.protocol_id != blip56.SUPERSCALAR_PROTOCOL_ID:
                peer_log.warning(peer, "ignoring piggyback for another protocol from %s", peer)
                return
            payload = protocol.decode(parsed.payload)
        except WireError as e:
            peer_log.warning(peer, "dropped malformed factory message from %s: %s", peer, e)
            return
        instance = payload.instance_id.hex()
        try:
            if self._update(peer, instance, payload):
                return
            if self._sale(peer, instance, payload):
                return
            if self._factory_end(peer, instance, payload):
                return
            if self._lsp.runs(instance):
                self._lsp.on_payload(instance, peer, payload)
            else:
                self._client.on_payload(peer, instance, payload)
        except Exception as e:  # a hostile or broken peer, or our own bug: abort, stay alive
            self._abort(peer, instance, e)

    def _update(self, peer: str, instance: str, payload: protocol.Payload) -> bool:
        """A DW state update's message: to the LSP's update from one of its clients, to a
        client's updater from its LSP (each checks the sender). True if handled (or dropped)."""
        record = self._records.get(instance)
        if isinstance(record, store.LspRecord):
            ours = isinstance(payload, protocol.UpdateStep) or (
                self._update_lsp.running(instance)
                and isinstance(payload, protocol.Ceremony | protocol.Text)
            )
            if ours:
                self._update_lsp.on_payload(record, peer, payload)
            return ours
        if not isinstance(record, store.ClientRecord):
            return False
        if isinstance(payload, protocol.Update):
            self._update_client.on_update(peer, record, payload)
            return True
        if isinstance(payload, protocol.UpdateSig):
            if peer == record.lsp_node_id:
                self._update_client.on_update_sig(record, payload)
            return True
        pending = record.update is not None or self._update_client.expects(instance)
        if not pending or not isinstance(payload, protocol.Ceremony | protocol.Text):
            return False
        if peer != record.lsp_node_id:
            peer_log.warning(peer, "dropped an update message from %s: not the LSP", peer)
        elif isinstance(payload, protocol.Ceremony):
            self._update_client.on_ceremony(record, payload)
        elif payload.type is protocol.PayloadType.ABORT:
            self._update_client.on_abort(record, payload.reason)
        else:
            return False
        return True

    def _sale(self, peer: str, instance: str, payload: protocol.Payload) -> bool:
        """A liquidity sale's message: to the LSP's sales from one of its clients, to a client's
        co-signer from anyone (it checks the sender is the LSP). True if handled (or dropped)."""
        record = self._records.get(instance)
        if isinstance(record, store.LspRecord) and record.state is store.LspState.FUNDED:
            mine = isinstance(payload, protocol.Buy | protocol.SaleStep) or (
                isinstance(payload, protocol.Text) and self._sales.running(instance)
            )
            if not mine:
                return False
            index = next((i for i, c in enumerate(record.clients) if c.node_id == peer), None)
            if index is None:
                peer_log.warning(peer, "dropped a sale message from %s: not a client", peer)
            elif isinstance(payload, protocol.Buy):
                self._payments.quote(record, index, payload)
            else:
                self._sales.on_payload(record, index, payload)
            return True
        if isinstance(payload, SALE_TO_CLIENT) or (
            isinstance(payload, protocol.Text) and self._cosign.expects(instance)
        ):
            if isinstance(record, store.ClientRecord):
                self._cosign.on_payload(record, peer, payload)
            else:
                peer_log.warning(peer, "dropped a sale message from %s: unknown factory", peer)
            return True
        return False

    def _factory_end(self, peer: str, instance: str, payload: protocol.Payload) -> bool:
        """A funded factory's end: MOVE to a client's mover; a client's KEY or refusal to the
        LSP's wind-down. True if handled (or dropped)."""
        record = self._records.get(instance)
        if isinstance(payload, protocol.Move):
            if isinstance(record, store.ClientRecord):
                self._mover.on_move(peer, record, payload)
            else:
                peer_log.warning(peer, "dropped MOVE from %s for unknown factory", peer)
            return True
        funded = (store.LspState.FUNDED, store.LspState.CLOSED)
        if (
            isinstance(record, store.LspRecord)
            and record.state in funded
            and isinstance(payload, protocol.Key | protocol.Text)
        ):
            self._wind_down.on_payload(record, peer, payload)
            return True
        if isinstance(payload, protocol.Key):
            peer_log.warning(peer, "dropped KEY from %s for a factory not funded by us", peer)
            return True
        return False

    def _abort(self, peer: str, instance: str, e: Exception) -> None:
        expected = isinstance(e, WireError | CeremonyError | MuSigError)
        if expected:
            peer_log.warning(
                peer, "rejected message from %s for factory %s: %s", peer, instance[:16], e
            )
        else:
            log.exception("internal error on a message from %s", peer)
        if self._lsp.runs(instance):
            self._lsp.abort(
                instance, f"client {peer}: {e}" if expected else f"internal error: {e!r}"
            )
        else:
            self._client.abort(instance, peer, str(e))
