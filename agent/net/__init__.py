"""User-space side of the net.* sensor (agent/bpf/net.c, agent/sensors/net.py):
address decoding, cluster CIDRs, /proc socket lookups and flow deltas."""
