"""Tamper evidence at the collector: manifest chains, signed checkpoints, verify."""
