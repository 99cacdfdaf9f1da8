"""Compliance reports (``gpuaudit report``): source -> build -> html/json/csv."""
