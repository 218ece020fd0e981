"""Analysis of recorded runs: significance, roles, diversity, interventions and claims."""
