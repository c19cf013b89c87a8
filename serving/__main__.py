"""``python -m serving`` runs the headprune CLI."""

from .cli import main

main()
