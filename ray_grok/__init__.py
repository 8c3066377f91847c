"""ray-grok: phase-diagram sweeps of He et al. 2024 ("Learning to grok") on Ray Tune.

The package in layers (docs/architecture.md): cli -> cluster -> sweep -> results -> trial, each
importing only the ones after it, plus errors, io and compat, which every layer may use.
"""
__version__ = "0.2.0"

from .compat import install_legacy_modules

install_legacy_modules()  # 0.1.0's module paths in old pickles and job scripts (compat.LEGACY)
