"""Who may ask what: tokens, the ZeroMQ handshake, and the folders a run may name."""
