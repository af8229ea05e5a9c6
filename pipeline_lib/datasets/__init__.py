"""The datasets a run uses, by task: the `datasets` params section (each entry is one instance of its stages)."""
