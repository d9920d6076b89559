"""Speed and memory benchmark of training, sampling and latent caching (`python -m
facemogle.bench`).
"""
