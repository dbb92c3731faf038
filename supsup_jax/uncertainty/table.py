"""Prints the markdown table of several uncertainty runs.

  python -m supsup_jax.uncertainty.table runs/uncertainty_mnist/*
"""
import sys

from supsup_jax.uncertainty.run import table

if __name__ == "__main__":
  if len(sys.argv) < 2:
    sys.exit("usage: python -m supsup_jax.uncertainty.table WORKDIR [WORKDIR ...]")
  print(table(sys.argv[1:]))
