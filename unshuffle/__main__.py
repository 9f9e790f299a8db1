"""``python -m unshuffle`` = the ``unshuffle`` command."""
from .cli import run

run()
