"""``python -m geoseg``: the same as the ``geoseg`` command."""

from .cli import main

main()
