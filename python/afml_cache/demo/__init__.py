"""``afml-cache demo``: an AFML research pipeline (volatility, CUSUM events, triple-barrier
labels, fractional differentiation, rolling features) on synthetic minute bars with each step
cached: once cold, once from the cache, and once after changing one parameter; it prints what
each run computed and how long it took, then which changes to the bars give a new key.

Not part of the library's API: `pipeline` is the demo's research code, `runner` prints the demo.
"""

from __future__ import annotations

from afml_cache.demo.runner import run_demo

__all__ = ["run_demo"]
