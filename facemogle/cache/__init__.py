"""The `cache_latents` stage: frozen-encoder latents of faces, mask slots and captions
(`build`), and reading them back (`store`).
"""
