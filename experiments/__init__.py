"""Shared experiment harness: provenance, results IO, tiny models and the smoke run."""
