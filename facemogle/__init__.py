"""Face-MoGLE: mixture of global and local experts on a FLUX transformer (arXiv 2509.00428)."""

__version__ = "0.1.0"
