"""Live measurements: generation stats and GPU memory/utilisation."""
