"""Using a trained model: the diffusers-style pipeline, the CLI, the web demo, gate maps.
"""
