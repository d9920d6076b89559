"""The `base` stage: the pretrained foundation (VAE, text encoder, FLUX transformer, face
parser), resolved (FLUX.1-dev) or pretrained (the embedded stand-ins), and its loader.
"""
