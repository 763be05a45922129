"""Pairing two devices: the protocol and its glue to the network.

- `protocol`: the sans-IO state machines (codes, SPAKE2, key confirmation);
  they take and return frame payloads and never touch a socket.
- `service`: the responder side (shows a code, serves the pairing ALPN on
  its own QUIC endpoint) and the initiator side (connects and runs the PAKE).
- `lan`: multicast announcements of a device that shows a code, and finding one.

The commands themselves are `exoquic.cli.pair` and `exoquic.cli.trust`.

See docs/pairing.md for how to use it and docs/security.md for why it is safe.
"""
