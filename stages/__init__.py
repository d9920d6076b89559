"""Stage scripts: one thin CLI per DVC stage (`python -m stages.<name> ...`), paths from
dvc.yaml."""
