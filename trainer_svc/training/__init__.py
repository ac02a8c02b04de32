"""Training under Delta Loss selection: the Trainer, its schedule, updates and snapshots."""
