"""file.write: protected trees and the user-space side of the open classifier.

trees.py finds and hashes the protected trees (the kernel filters with the
hashes); runtime.py resolves the kernel's records to absolute paths, owners
and trees, and keeps the kernel's per-process cwd entries current.
"""
