"""Gate diversity (claims G3 and P4): how many distinct channel maps a layer holds."""
from __future__ import annotations

import numpy as np


def participation_ratio(covariance: np.ndarray) -> float:
    """Effective number of independent channel maps: ``(sum λ)^2 / sum λ^2`` of the eigenvalues of
    the channel-by-channel covariance. 1 when all channels carry one map (up to scale); k for k
    independent maps of equal variance. NaN when there is no variance at all."""
    eig = np.clip(np.linalg.eigvalsh(covariance), 0, None)
    total = eig.sum()
    return float(total ** 2 / (eig ** 2).sum()) if total > 1e-12 else float("nan")


def gate_covariance(comoment: np.ndarray, n: int) -> np.ndarray:
    """Channel-by-channel covariance ``[C, C]`` from a co-moment ``[C, C]`` over ``n`` pixels."""
    return comoment / max(n, 1)
