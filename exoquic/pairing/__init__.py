"""`exoquic pair` and `exoquic trust` over the network: the glue around the
sans-IO pairing state machines (`exoquic.identity.pairing`).

- `service`: the responder side (shows a code, serves the pairing ALPN on
  its own QUIC endpoint) and the initiator side (connects and runs the PAKE).
- `lan`: multicast announcements of a device that shows a code, and finding one.
- `cli`: `add_pair_command` and `add_trust_command` for `exoquic.cli`.

See docs/pairing.md for how to use it and docs/security.md for why it is safe.
"""
