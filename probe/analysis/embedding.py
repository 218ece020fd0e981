"""A 2-D embedding of gated channels from their statistic profiles, with clusters."""
from __future__ import annotations

import numpy as np
import pandas as pd

PROFILE_COLUMNS = ("auc_hole", "auc_sketch", "soft_fraction", "mean_hole", "mean_valid", "mean_sketch")


def channel_embedding(channels: pd.DataFrame, labels: pd.DataFrame, max_clusters: int = 8,
                      seed: int = 0) -> pd.DataFrame:
    """PCA (2 components) of standardised per-channel profiles (the columns of
    :data:`PROFILE_COLUMNS` plus each label's AUC), clustered with k-means, k in 2..max_clusters
    chosen by the best silhouette. Returns ``layer, channel, pc1, pc2, cluster``."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import silhouette_score
    from sklearn.preprocessing import StandardScaler

    label_auc = labels.pivot_table(index=["layer", "channel"], columns="label", values="auc")
    label_auc.columns = [f"auc:{c}" for c in label_auc.columns]
    profile = channels.set_index(["layer", "channel"])[list(PROFILE_COLUMNS)].join(label_auc)
    profile = profile.fillna(profile.mean()).fillna(0.5)
    x = StandardScaler().fit_transform(profile.to_numpy())
    coords = PCA(n_components=2, random_state=seed).fit_transform(x)
    best, best_score = np.zeros(len(x), int), -1.0
    for k in range(2, min(max_clusters, len(x) - 1) + 1):
        labels_k = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(x)
        score = silhouette_score(x, labels_k)
        if score > best_score:
            best, best_score = labels_k, score
    out = profile.index.to_frame(index=False)
    out["pc1"], out["pc2"], out["cluster"] = coords[:, 0], coords[:, 1], best
    return out
