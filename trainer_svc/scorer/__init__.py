"""Talking to the scorer: checkpoints out over ZeroMQ, weights in over REST, and what to do when it
fails."""
