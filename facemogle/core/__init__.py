"""Conventions every stage shares: params schema, label palette and mask decoupling, FLUX's
latent packing and constants, the rectified-flow time convention, atomic file I/O.
"""
