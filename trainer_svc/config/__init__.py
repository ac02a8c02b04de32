"""The trainer's configuration: the YAML keys, checked at start."""
