"""The `base` stage: the pretrained foundation (VAE, text encoder, FLUX transformer, face
parser), resolved (FLUX.1-dev) or checked (the embedded base, trained once by
`facemogle.pretrain`), and its loader.
"""
