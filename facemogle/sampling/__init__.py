"""The `sample` stage: the three generation modes (`sampler`) and contact sheets (`sheets`).
"""
