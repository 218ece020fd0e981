"""Analysis of recorded runs: significance, roles, diversity, interventions, attribution, claims."""
from .analyze import analyze
from .claims import claims

__all__ = ["analyze", "claims"]
