"""ray-grok: phase-diagram sweeps of He et al. 2024 ("Learning to grok") on Ray Tune."""
__version__ = "0.1.0"
