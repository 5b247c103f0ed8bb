"""The flick benchmark harness (see bench/README.md). Standard library only."""
