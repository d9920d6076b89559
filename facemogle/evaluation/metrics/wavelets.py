"""A multi-level 1-D discrete wavelet transform in torch (orthogonal wavelets, zero padding).

The conventions are PyWavelets' `mode="zero"` (which pytorch_wavelets' `DWT1DForward` follows
and Wavelet-CLIP's head was trained with): for a filter of length L, each level keeps
floor((n + L - 1) / 2) coefficients, a = (x * dec_lo)[1::2] and d = (x * dec_hi)[1::2] with *
the full convolution; the inverse up-samples, convolves with the reconstruction filters and
keeps the central 2n - L + 2 values, dropping the last value of a band that is one longer than
the detail band it is joined with. The transform reconstructs its input exactly (an odd-length
input comes back one value longer, as in PyWavelets).
"""

from __future__ import annotations

import torch
from torch import nn

# Daubechies db6 scaling filter (PyWavelets' rec_lo; dec_lo is its reverse): 12 taps summing
# to sqrt(2), orthonormal to their even shifts, 6 vanishing moments of the wavelet.
DB6: tuple[float, ...] = (
    0.11154074335008017, 0.4946238903983854, 0.7511339080215775, 0.3152503517092432,
    -0.22626469396516913, -0.12976686756709563, 0.09750160558707936, 0.02752286553001629,
    -0.031582039318031156, 0.0005538422009938016, 0.004777257511010651, -0.00107730108499558,
)


class WaveletTransform1d(nn.Module):
    """`levels`-level DWT of (B, C, N) signals along the last axis, and its inverse.

    scaling: the reconstruction low-pass filter (e.g. `DB6`, or (1, 1) / sqrt(2) for Haar).
    The filters are non-persistent buffers: they are not weights of any checkpoint.
    """

    def __init__(self, scaling: tuple[float, ...], levels: int):
        super().__init__()
        if levels < 1 or len(scaling) < 2 or len(scaling) % 2:
            raise ValueError(f"need levels >= 1 and an even-length filter, got {levels}, "
                             f"{len(scaling)} taps")
        rec_lo = torch.tensor(scaling, dtype=torch.float64)
        rec_hi = self.highpass(rec_lo)
        self.levels = levels
        self.taps = len(scaling)
        self.register_buffer("rec", torch.stack([rec_lo, rec_hi])[:, None],
                             persistent=False)  # (2, 1, L) float64, cast to the input's dtype

    @staticmethod
    def highpass(rec_lo: torch.Tensor) -> torch.Tensor:
        """Reconstruction high-pass of an orthogonal wavelet: rec_hi[k] = (-1)^k dec_lo[k]."""
        signs = torch.ones_like(rec_lo)
        signs[1::2] = -1.0
        return signs * rec_lo.flip(0)

    def lengths(self, n: int) -> list[int]:
        """Coefficients per level for a signal of n values: [n_1, ..., n_J] (1024 -> 137 last
        for db6, 3 levels)."""
        out = []
        for _ in range(self.levels):
            n = (n + self.taps - 1) // 2
            out.append(n)
        return out

    def _analysis(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(R, 1, n) -> approximation and detail, each (R, 1, (n + L - 1) // 2)."""
        # Correlation with the reversed decomposition filters (= rec) is the full convolution.
        rec = self.rec.to(x.dtype)  # (2, 1, L)
        full = nn.functional.conv1d(x, rec, padding=self.taps - 1)  # (R, 2, n + L - 1)
        kept = full[..., 1::2]  # (R, 2, (n + L - 1) // 2)
        return kept[:, :1], kept[:, 1:]

    def _synthesis(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """Two (R, 1, n) bands -> (R, 1, 2n - L + 2)."""
        rec = self.rec.to(low.dtype)
        full = (nn.functional.conv_transpose1d(low, rec[:1], stride=2)
                + nn.functional.conv_transpose1d(high, rec[1:], stride=2))  # (R, 1, 2n + L - 2)
        return full[..., self.taps - 2: 2 * low.shape[-1]]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, C, N) -> coarsest approximation (B, C, n_J) and details [(B, C, n_j)], j = 1..J
        (finest first)."""
        b, c, n = x.shape
        low, highs = x.reshape(b * c, 1, n), []  # (R, 1, N)
        for _ in range(self.levels):
            low, high = self._analysis(low)  # (R, 1, n_j) each
            highs.append(high.reshape(b, c, -1))
        return low.reshape(b, c, -1), highs

    def inverse(self, low: torch.Tensor, highs: list[torch.Tensor]) -> torch.Tensor:
        """Approximation (B, C, n_J) and details [(B, C, n_j)] -> (B, C, N)."""
        b, c, _ = low.shape
        x = low.reshape(b * c, 1, -1)  # (R, 1, n_J)
        for high in reversed(highs):
            high = high.reshape(b * c, 1, -1)  # (R, 1, n_j)
            if x.shape[-1] == high.shape[-1] + 1:
                x = x[..., :-1]
            x = self._synthesis(x, high)  # (R, 1, 2 n_j - L + 2)
        return x.reshape(b, c, -1)
