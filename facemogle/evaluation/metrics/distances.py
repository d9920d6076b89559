"""Distances between two sets of features: Frechet distance, KID, and the RBF MMD of CMMD.

Pure NumPy/SciPy functions over feature arrays (N, D); they know nothing of the network that
produced the features. `feature_space_metrics` names the results for their space
(`base.feature_space_names`): "fid"/"kid_x1000" for Inception-V3, "fd_<space>" /
"kid_<space>_x1000" otherwise.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from facemogle.evaluation.metrics.common import MetricValue, feature_space_names


def _features(x: np.ndarray, what: str, min_rows: int = 2) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < min_rows:
        raise ValueError(f"{what}: expected features of shape (N, D) with N >= {min_rows}, "
                         f"got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what}: features contain NaN or infinite values")
    return x


def _same_dim(x: np.ndarray, y: np.ndarray) -> None:
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sizes differ: {x.shape[1]} vs {y.shape[1]}")


def frechet_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                       eps: float = 1e-6) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    d^2 = |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)). As in the reference FID
    code, a singular product gets `eps` on the diagonals, and the matrix square root's imaginary
    part, which is rounding noise for two PSD matrices, is dropped when its diagonal is below
    1e-3 (larger is an error: the covariances are not what they should be).
    """
    diff = mu1 - mu2  # (D,)
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)  # (D, D)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imaginary = np.abs(np.diagonal(covmean).imag).max()
        if imaginary > 1e-3:
            raise ValueError(f"Frechet distance: matrix square root has an imaginary component "
                             f"of {imaginary:.3g} (covariances not positive semi-definite?)")
        covmean = covmean.real
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean)
    # A squared distance: values below zero are rounding of a zero distance.
    return max(float(value), 0.0)


def frechet_distance(features1: np.ndarray, features2: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, D) and (M, D).

    Means and unbiased covariances (ddof=1) in float64, as in FID.
    """
    x = _features(features1, "features1")
    y = _features(features2, "features2")
    _same_dim(x, y)
    return frechet_from_stats(x.mean(0), np.cov(x, rowvar=False), y.mean(0),
                              np.cov(y, rowvar=False))


def polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the KID kernel k(a, b) = (a.b / D + 1)^3; x, y: (m, D) each.

    The unbiased estimator drops the diagonals of k(x, x) and k(y, y) (KID paper, Binkowski et
    al. 2018, eq. 2; torch-fidelity's `kid`).
    """
    m = x.shape[0]
    d = x.shape[1]
    k_xx = (x @ x.T / d + 1.0) ** 3  # (m, m)
    k_yy = (y @ y.T / d + 1.0) ** 3  # (m, m)
    k_xy = (x @ y.T / d + 1.0) ** 3  # (m, m)
    off_xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    off_yy = (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(off_xx + off_yy - 2.0 * k_xy.mean())


def kid(features1: np.ndarray, features2: np.ndarray, subsets: int = 100,
        subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (unscaled): mean and std of `polynomial_mmd2` over subsets.

    Each of the `subsets` draws takes min(subset_size, N, M) features from each set without
    replacement, with a `numpy.random.Generator(seed)`, so the value is reproducible. The
    standard settings (torch-fidelity, the KID paper) are 100 subsets of 1000. std is the
    population std over subsets, as torch-fidelity and torchmetrics report it.
    """
    x = _features(features1, "features1")
    y = _features(features2, "features2")
    _same_dim(x, y)
    if subsets < 1 or subset_size < 2:
        raise ValueError(f"kid: need subsets >= 1 and subset_size >= 2, got {subsets}, "
                         f"{subset_size}")
    m = min(subset_size, x.shape[0], y.shape[0])
    rng = np.random.default_rng(seed)
    values = np.array([
        polynomial_mmd2(x[rng.choice(x.shape[0], m, replace=False)],
                        y[rng.choice(y.shape[0], m, replace=False)])
        for _ in range(subsets)
    ])  # (subsets,)
    return float(values.mean()), float(values.std())


def rbf_mmd2(x: np.ndarray, y: np.ndarray, sigma: float = 10.0, biased: bool = True) -> float:
    """MMD^2 with the Gaussian RBF kernel k(a, b) = exp(-|a - b|^2 / (2 sigma^2)).

    x: (N, D), y: (M, D). `biased=True` keeps the diagonals of k(x, x) and k(y, y), as the CMMD
    paper's reference code does (Jayasumana et al. 2024); `biased=False` is the unbiased
    estimator (diagonals dropped). Unscaled: CMMD multiplies by 1000.
    """
    x = _features(x, "x")
    y = _features(y, "y")
    _same_dim(x, y)
    gamma = 1.0 / (2.0 * sigma**2)

    def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T  # (Na, Nb)
        return np.exp(-gamma * np.maximum(sq, 0.0))

    k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
    if biased:
        return float(k_xx.mean() + k_yy.mean() - 2.0 * k_xy.mean())
    n, m = x.shape[0], y.shape[0]
    off_xx = (k_xx.sum() - np.trace(k_xx)) / (n * (n - 1))
    off_yy = (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(off_xx + off_yy - 2.0 * k_xy.mean())


def feature_space_metrics(space: str, generated: np.ndarray, reference: np.ndarray, *,
                          subsets: int, subset_size: int, seed: int, backend: str
                          ) -> list[MetricValue]:
    """Frechet distance, KID x1000 and its std in a named feature space.

    generated: (N, D), reference: (M, D). Names follow `feature_space_names(space)`; the KID std
    is "<kid name>_std".
    """
    fd_name, kid_name = feature_space_names(space)
    kid_mean, kid_std = kid(generated, reference, subsets, subset_size, seed)
    return [
        MetricValue(fd_name, frechet_distance(generated, reference), backend),
        MetricValue(kid_name, 1000.0 * kid_mean, backend),
        MetricValue(f"{kid_name}_std", 1000.0 * kid_std, backend),
    ]
