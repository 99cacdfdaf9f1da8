"""code.load's user-space parts: mapping resolution, report rule, hashing,
and process.exec's fileless classification."""
