"""Sphinx configuration of the supsup_jax documentation.

Build (warnings are errors):

    python -m sphinx -W -b html docs docs/_build/html
"""
import importlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # autodoc imports supsup_jax from this checkout

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # importing the library touches no GPU
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

project = "supsup_jax"
author = "supsup_jax contributors"
copyright = "2026, supsup_jax contributors"  # pylint: disable=redefined-builtin
release = version = "0.1.0"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# MyST: ```{directive} fences, $math$, :::{note} colon fences, heading anchors.
myst_enable_extensions = ["colon_fence", "dollarmath", "deflist", "attrs_block"]
myst_heading_anchors = 3

# autodoc + napoleon (Google-style docstrings, as the library writes them).
autodoc_default_options = {
    "members": True,
    "member-order": "bysource",
}
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True

# A reference to anything of supsup_jax that does not resolve is an error
# (sphinx -W); types of other libraries (jax, flax, numpy, typing) are not
# documented here, so their references are not checked.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(?!supsup_jax\b).*"),
]

html_theme = "furo"
html_title = "supsup_jax"
html_static_path = []
html_theme_options = {
    "source_repository": "",
    "navigation_with_keys": True,
}
pygments_style = "sphinx"
pygments_dark_style = "monokai"


def _resolve_reexport(app, env, node, contnode):
  """A reference to a name a module re-exports (``supsup_jax.training.make_optimizer``)
  resolves to where it is documented (``supsup_jax.optim.make_optimizer``); a
  target that does not exist still fails the build."""
  target = node.get("reftarget", "")
  if node.get("refdomain") != "py" or not target.startswith("supsup_jax."):
    return None
  modname, _, attr = target.rpartition(".")
  try:
    obj = getattr(importlib.import_module(modname), attr)
  except (ImportError, AttributeError):
    return None
  canonical = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
  if canonical == target or not canonical.startswith("supsup_jax."):
    return None
  return env.get_domain("py").resolve_xref(env, node["refdoc"], app.builder, node["reftype"],
                                           canonical, node, contnode)


def setup(app):
  app.connect("missing-reference", _resolve_reexport)
