"""Feature extraction and the PCA-whitening + L2 step that DeepCluster clusters on."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from training.embeddings import l2_normalize
from sklearn.decomposition import PCA


@torch.no_grad()
def extract(model: torch.nn.Module, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Pooled features of every image, in input order, in eval mode (no augmentation), on
    whatever device the model is."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.asarray(images[start : start + batch_size], dtype=np.float32))[:, None]
        out.append(model(x.to(dev)).float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


@dataclass
class Whitening:
    """PCA to ``dim`` with whitening, then L2 normalisation (DeepCluster's preprocessing).

    Kept as plain arrays so a saved model embeds new images exactly as it embedded the run."""

    mean: np.ndarray
    components: np.ndarray  # (dim, d)
    scale: np.ndarray  # (dim,) 1 / sqrt(explained variance)

    @classmethod
    def fit(cls, feats: np.ndarray, dim: int = 256, seed: int = 0) -> "Whitening":
        dim = int(min(dim, feats.shape[1], max(1, len(feats) - 1)))
        pca = PCA(n_components=dim, whiten=True, random_state=seed).fit(feats.astype(np.float64))
        var = np.maximum(pca.explained_variance_, 1e-12)
        return cls(pca.mean_.astype(np.float32), pca.components_.astype(np.float32),
                   (1.0 / np.sqrt(var)).astype(np.float32))

    def transform(self, feats: np.ndarray) -> np.ndarray:
        return l2_normalize(((feats - self.mean) @ self.components.T) * self.scale)

    def state(self) -> dict:
        return {"mean": self.mean, "components": self.components, "scale": self.scale}
