"""`exoquic pair` and `exoquic trust` over the network: the glue around the
sans-IO pairing state machines (`exoquic.identity.pairing`).

- `service`: the responder side (shows a code, serves the pairing ALPN on
  its own QUIC endpoint) and the initiator side (connects and runs the PAKE).
- `lan`: multicast announcements of a device that shows a code, and finding one.

The commands themselves are `exoquic.cli.pair` and `exoquic.cli.trust`.

See docs/pairing.md for how to use it and docs/security.md for why it is safe.
"""
