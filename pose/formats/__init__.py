"""Readers (and, for the synthetic world, writers) of the real dataset formats."""
