"""scdlkit benchmarks: ``python -m benchmarks`` runs the suite in ``run.py``."""
