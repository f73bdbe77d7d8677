"""``python -m eigenmix`` runs the console script."""

from eigenmix.cli import main

main()
