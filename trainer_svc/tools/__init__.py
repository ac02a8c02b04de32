"""Commands beside training: compare strategies, report a run, merge a LoRA adapter."""
