"""``python -m serving`` runs the headprune CLI."""

from serving.cli import main

main()
