"""``python -m fe2e_deploy ...``: the ``fe2e-deploy`` command, for environments where it is not installed."""

from .cli import main

main()
