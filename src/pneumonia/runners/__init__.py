"""What the entry points do: `train`, `evaluate` (and their shared setup in `common`)."""
