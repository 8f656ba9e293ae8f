"""What a run leaves on disk: its folder and files, the validated readers of its records, its identity and
provenance."""
