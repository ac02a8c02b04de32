"""Reading the training data as both services must: datasets, templates, tokenization, batches."""
