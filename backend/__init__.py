"""taskring, a distributed task store; its layers and modules: README.md, Layout."""
