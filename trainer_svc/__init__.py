"""The trainer side: trains on the samples the scorer's Delta Loss weights select."""
