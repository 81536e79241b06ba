"""One module per component process, and `taskring up`, which starts them all."""
