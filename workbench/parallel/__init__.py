"""Parallelism, applied from outside to single-device models: `dims` (degrees and groups), `comm` (every
collective), `vae` (decode strategies, planner, cost model, auto), `dit` (sequence-parallel transformers)."""
