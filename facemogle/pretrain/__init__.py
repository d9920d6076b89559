"""Training the embedded base once (`python -m stages.pretrain`; not a `dvc repro` stage): the
phases' shared loop and face set (`common`), the VAE (`vae`), face parser (`parser`) and
transformer (`transformer`) phases, their checkpoints (`phase_store`), and the run that trains
and ships the base with its provenance (`train_embedded`). What the stages load from the
shipped base lives in `facemogle.base`.
"""
