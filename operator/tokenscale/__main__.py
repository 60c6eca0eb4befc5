"""``python -m tokenscale`` is the ``tokenscale`` command."""

from tokenscale.cli import main

main()
