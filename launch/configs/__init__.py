"""One config per experiment: ``launch/configs/<name>.py`` with ``get_config()``."""
import importlib


def load(name: str, arg: str | None = None):
  """``get_config()`` (or ``get_config(arg)``) of ``launch/configs/<name>.py``."""
  module = importlib.import_module(f"launch.configs.{name}")
  return module.get_config() if arg is None else module.get_config(arg)
