"""Finding peers: signed multicast, a manual JSON file, Tailscale.

- `announcement`, `peer_table`, `peers`: pure (sans-IO) parts.
- `multicast`, `manual`, `tailscale`: one trio driver per method.
- `service.open_discovery`: the chosen methods as one merged event stream.
- `python -m exoquic.discovery`: run discovery alone and print events (debugging).

Importing this package imports no trio code; import the modules you need.
"""
