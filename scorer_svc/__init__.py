"""The scoring service: checkpoints in over ZeroMQ, losses stored, weights served over REST."""
