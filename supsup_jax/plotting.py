"""Plot set-up and saving shared by every run's figures.

Matplotlib is imported only when a plot is drawn (``Agg``: no display needed),
and every PNG is written atomically (temporary file, then ``os.replace``), so
a killed run never leaves half a picture.
"""
from __future__ import annotations

import os


def pyplot():
  """``matplotlib.pyplot`` on the Agg backend."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def save_atomic(fig, path: str, dpi: float | None = None) -> None:
  """Saves ``fig`` as the PNG ``path`` atomically and closes it."""
  plt = pyplot()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=fig.dpi if dpi is None else dpi)
  plt.close(fig)
  os.replace(tmp, path)
