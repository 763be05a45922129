"""Defaults that several layers share: ports, lifetimes, limits.

One home for each value, so the command line (which must start fast and so
cannot import the modules that use them) and those modules never disagree.
This module imports nothing: any module may import it.
"""

from __future__ import annotations

API_HOST = "127.0.0.1"
"""Where `exoquic up` serves the HTTP API: loopback, so nothing is open to the LAN."""
API_PORT = 52415
"""TCP port of the HTTP API and web UI."""
MULTICAST_PORT = 52416
"""UDP port of the discovery multicast group (nodes and devices showing a pairing code)."""
NODE_PORT = 52417
"""UDP port of the node protocol (QUIC)."""

PAIRING_CODE_LIFETIME_S = 120.0
"""How long a pairing code stays valid once shown."""
PAIRING_SEARCH_S = 10.0
"""How long `exoquic pair CODE` looks on the LAN for the device showing the code."""

DISCOVERY = "multicast,manual"
"""How a node finds its peers unless told otherwise (`exoquic up --discovery`)."""
PEER_TIMEOUT_S = 3.0
"""Silence after which a peer counts as gone (the QUIC idle timeout)."""

MAX_CONTEXT = 2048
"""Longest prompt + reply, in tokens, a request may reach."""

MAX_REQUESTS = 64
"""Generations a node's API runs at once (`exoquic up --max-requests`)."""
MAX_QUEUED = 16
"""Requests that may wait for a slot at once (`--max-queued`)."""
QUEUE_TIMEOUT_S = 0.0
"""How long a request beyond MAX_REQUESTS waits for a slot (0: refused at once)."""

# Memory a node keeps for finished prompts' KV caches, for later requests that
# start the same way (`exoquic up --prefix-cache`): ~10k positions of a 1B model.
PREFIX_CACHE_BYTES = 512 << 20
