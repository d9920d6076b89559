"""The `evaluate` and `report` stages: metrics of generated faces, paper-style tables,
the ablation table.
"""
