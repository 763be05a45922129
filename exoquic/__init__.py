"""exoquic: peer-to-peer LLM inference over authenticated QUIC."""

__version__ = "0.1.0"
