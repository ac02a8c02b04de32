"""Receiving runs and checkpoints over ZeroMQ: the socket, registrations and uploads."""
