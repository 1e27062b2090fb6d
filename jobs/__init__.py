"""Ray entry points: `python -m jobs.<name>`."""
