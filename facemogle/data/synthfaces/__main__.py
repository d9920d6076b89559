"""``python -m facemogle.data.synthfaces sheet|bench ...`` (`cli.py`)."""

from facemogle.data.synthfaces.cli import main

main()
