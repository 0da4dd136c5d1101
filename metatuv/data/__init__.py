"""Benchmarks and episode sampling."""

from metatuv.data.sinusoid import Sinusoid

__all__ = ["Sinusoid"]
