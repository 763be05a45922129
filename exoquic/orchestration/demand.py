"""Who wants a model loaded on demand kept loaded, on one node (wire `Interest`).

A model loaded on demand runs in a ring of its own. The nodes that got
requests for it want it for their keep-alive; nodes that joined only to lend
their memory do not want it themselves. Every node keeps its shard while it
wants the model or any linked peer of that ring does, so the ring stays whole
while anyone uses it and every node unloads it together when nobody does.
`Demand` is the record of this for one ring: what this node said, and which
linked peers said they want it. The `ModelSet` decides what this node wants
and unloads; the router feeds it the peers' messages.
"""

from __future__ import annotations

from collections.abc import Callable

from exoquic.orchestration.peers import Peers
from exoquic.wire.messages import Interest


class Demand:
    """This node's and its linked peers' interest in one on-demand model."""

    def __init__(self, peers: Peers, wanted: bool) -> None:
        self.peers = peers
        self.mine = wanted
        self.wanting: set[str] = set()  # linked peers that want the model
        self.heard = False  # whether any peer said anything yet
        self.on_change: Callable[[], None] = lambda: None  # the ModelSet's wake-up

    @property
    def peers_want(self) -> bool:
        return bool(self.wanting)

    def greeting(self) -> Interest:
        """What to tell a newly linked peer."""
        return Interest(self.mine)

    def receive(self, sender: str, message: Interest) -> None:
        self.heard = True
        if message.wanted:
            self.wanting.add(sender)
        else:
            self.wanting.discard(sender)
        self.on_change()

    def peer_left(self, node_id: str) -> None:
        if node_id in self.wanting:
            self.wanting.discard(node_id)
            self.on_change()

    async def tell(self, wanted: bool) -> None:
        """Say whether this node wants the model, to every linked peer, if it changed."""
        if wanted == self.mine:
            return
        self.mine = wanted
        for node_id in self.peers.live_peers():
            await self.peers.send_quietly(node_id, Interest(wanted))
