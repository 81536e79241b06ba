"""The web process (`taskring web`): health, readiness, metrics, the UI and its bridges."""
