"""A/B benchmarks: a matrix of option cells run on a target (the WebUI in process, its HTTP API, or a
standalone UNet), with per-cell timing statistics, memory peaks and image differences against a baseline."""
