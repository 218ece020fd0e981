"""Comparison reports: self-contained HTML plus a Markdown summary."""
from .builder import SECTIONS, build_report

__all__ = ["SECTIONS", "build_report"]
