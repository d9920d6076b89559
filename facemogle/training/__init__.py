"""The `train` stage: one training step (`step`), the loop (`loop`), checkpoints (`checkpoint`).
"""
