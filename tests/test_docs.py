"""The documentation is checked, not only written.

* The Sphinx site (docs/) builds with warnings as errors (a broken
  cross-reference, an invalid docstring or a stale autodoc target fails), when
  Sphinx is installed (``pip install -e .[docs]``; CI builds it in .ci/run).
* Every name ``supsup_jax`` exports, and every public module, is in the API
  reference (read back from the built ``objects.inv``).
* The ```python blocks of the docs run as written, page by page (excerpts that
  need data or a run are ```{code-block} python and are not run); the README's
  are run by tests/test_readme.py.
* The commands the README and the docs show name launchers, configs, config
  keys, methods, figures and benchmark rows that exist (nothing is run).
"""
import glob
import importlib
import importlib.util
import os
import pkgutil
import re
import subprocess
import sys
import zlib

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, "docs")
README = os.path.join(REPO, "README.md")
PAGES = sorted(p for p in glob.glob(os.path.join(DOCS, "**", "*.md"), recursive=True)
               if "_build" not in os.path.relpath(p, DOCS).split(os.sep))
RUNNABLE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _rel(path):
  return os.path.relpath(path, REPO)


def _missing_docs_packages():
  return [m for m in ("sphinx", "myst_parser", "furo") if importlib.util.find_spec(m) is None]


# ------------------------------------------------------------------ the site
@pytest.fixture(scope="module")
def site(tmp_path_factory):
  missing = _missing_docs_packages()
  if missing:
    pytest.skip(f"{', '.join(missing)} not installed: pip install -e '.[docs]' to build the "
                "docs here (.ci/run builds them after the tests)")
  out = tmp_path_factory.mktemp("html")
  proc = subprocess.run(
      [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
       "-d", str(out / ".doctrees"), DOCS, str(out)],
      cwd=REPO, capture_output=True, text=True, timeout=1800,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, f"sphinx -W failed:\n{proc.stderr[-6000:]}"
  return out


def _inventory(site_dir) -> dict:
  """``objects.inv`` as {name: role} (format v2: 4 header lines, then zlib)."""
  with open(os.path.join(site_dir, "objects.inv"), "rb") as f:
    for _ in range(4):
      f.readline()
    text = zlib.decompress(f.read()).decode()
  out = {}
  for line in text.splitlines():
    m = re.match(r"(.+?)\s+(\S+:\S+)\s+(-?\d+)\s+(\S*)\s+(.*)", line)
    if m:
      out[m.group(1)] = m.group(2)
  return out


def test_the_site_builds_with_warnings_as_errors(site):
  for page in ["index.html", "api/index.html", "guide/library.html", "py-modindex.html"]:
    assert (site / page).exists(), page


def test_every_exported_name_is_in_the_api_reference(site):
  import supsup_jax  # pylint: disable=import-outside-toplevel
  inventory = _inventory(site)
  missing = []
  for name in sorted(n for n in vars(supsup_jax) if not n.startswith("_")):
    obj = getattr(supsup_jax, name)
    if isinstance(obj, type(sys)):
      targets = [obj.__name__]
    else:
      targets = [f"supsup_jax.{name}",
                 f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', name)}"]
    if not any(t in inventory for t in targets):
      missing.append(f"{name} (looked for {' or '.join(targets)})")
  assert not missing, "exported but not in the API reference: " + "; ".join(missing)


def _public_modules():
  import supsup_jax  # pylint: disable=import-outside-toplevel
  names = ["supsup_jax"]
  for info in pkgutil.walk_packages(supsup_jax.__path__, "supsup_jax."):
    if not any(part.startswith("_") for part in info.name.split(".")):
      names.append(info.name)
  return names


def test_every_public_module_is_in_the_api_reference(site):
  inventory = _inventory(site)
  missing = [m for m in _public_modules() if inventory.get(m) != "py:module"]
  assert not missing, ("modules without a section in docs/api/*.md (add an automodule): "
                       + ", ".join(missing))


def test_every_method_make_is_documented(site):
  inventory = _inventory(site)
  from supsup_jax import methods  # pylint: disable=import-outside-toplevel
  missing = []
  for spec in sorted(set(methods.METHODS.values())):
    module = importlib.import_module(spec.split(":")[0])
    for fn in ("make", spec.split(":")[1]):
      if hasattr(module, fn) and f"{module.__name__}.{fn}" not in inventory:
        missing.append(f"{module.__name__}.{fn}")
  assert not missing, "builders without a docstring in the API reference: " + ", ".join(missing)


# ------------------------------------------------------------- the examples
PAGES_WITH_CODE = [p for p in PAGES if RUNNABLE.search(open(p, encoding="utf-8").read())]


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=_rel)
def test_python_examples_run_as_written(page, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # anything an example writes lands here
  namespace = {"__name__": "__docs__"}
  for i, code in enumerate(RUNNABLE.findall(open(page, encoding="utf-8").read())):
    exec(compile(code, f"{_rel(page)}[python block {i}]", "exec"), namespace)  # pylint: disable=exec-used


def test_the_docs_keep_runnable_examples():
  assert {_rel(p) for p in PAGES_WITH_CODE} >= {os.path.join("docs", "guide", "library.md"),
                                                os.path.join("docs", "guide", "learner.md")}


# ------------------------------------------------------------- the commands
def _commands():
  """(file, command text) for every ``python -m ...`` in bash blocks and inline code."""
  out = []
  for path in [README] + PAGES:
    text = open(path, encoding="utf-8").read()
    chunks = re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M)
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    chunks += [c.replace("\n", " ") for c in re.findall(r"`(python -m [^`]+)`", prose)]
    for chunk in chunks:
      chunk = chunk.replace("\\\n", " ")
      for piece in re.split(r"(?=python -m )", chunk)[1:]:
        out.append((_rel(path), piece.split("\n")[0]))
  return out


def _has_key(config, dotted):
  node = config
  for part in dotted.split("."):
    if not hasattr(node, "keys") or part not in node:
      return False
    node = node[part]
  return True


def test_commands_name_what_exists():
  from supsup_jax import methods  # pylint: disable=import-outside-toplevel
  from supsup_jax.runs import figures  # pylint: disable=import-outside-toplevel
  from supsup_jax.runs import storage_figures  # pylint: disable=import-outside-toplevel
  from launch import configs  # pylint: disable=import-outside-toplevel
  commands = _commands()
  assert len(commands) > 20, commands
  benches = None
  problems = []
  for path, cmd in commands:
    module = re.match(r"python -m ([\w.]+)", cmd).group(1)
    if module.split(".")[0] not in ("launch", "benchmarks", "supsup_jax", "tools"):
      continue  # another project's tool (sphinx, pip)
    if importlib.util.find_spec(module) is None:
      problems.append(f"{path}: no module {module}: {cmd}")
      continue
    config = None
    m = re.search(r"--config=launch/configs/([\w<>]+)\.py(?::(\w+))?", cmd)
    if m and "<" not in m.group(1):
      config = configs.load(m.group(1), m.group(2))
      for key in re.findall(r"--config\.([\w.]+)=", cmd):
        if not _has_key(config, key):
          problems.append(f"{path}: {m.group(1)} has no key {key}: {cmd}")
      method = re.search(r"--config\.method=(\w+)", cmd)
      if method and config.get("runner", "continual") == "continual":
        if method.group(1) not in methods.METHODS:
          problems.append(f"{path}: unknown method {method.group(1)}: {cmd}")
    for listed in re.findall(r"--methods=([\w,]+)", cmd):
      problems += [f"{path}: unknown method {x}: {cmd}"
                   for x in listed.split(",") if x not in methods.entry_names()]
    for fig in re.findall(r"--figure=(\w+)", cmd):
      if fig not in figures.FIGURES and fig not in storage_figures.FIGURES:
        problems.append(f"{path}: unknown figure {fig}: {cmd}")
    only = re.findall(r"--only[= ]([\w,*]+)", cmd)
    if only and module == "benchmarks.run":
      if benches is None:
        from benchmarks import registry  # pylint: disable=import-outside-toplevel
        benches = registry.load_all()
      problems += [f"{path}: no benchmark row {x}: {cmd}"
                   for names in only for x in names.split(",")
                   if x and not x.isupper() and not x.endswith("*") and x not in benches]
  assert not problems, "\n".join(problems)


def _all_config_keys():
  """Every dotted key (and sub-config) of every config in launch/configs/."""
  from launch import configs  # pylint: disable=import-outside-toplevel
  keys = set()

  def walk(node, prefix):
    for k in node.keys():
      keys.add(prefix + k)
      if hasattr(node[k], "keys"):
        walk(node[k], prefix + k + ".")

  for path in glob.glob(os.path.join(REPO, "launch", "configs", "*.py")):
    name = os.path.basename(path)[:-3]
    if name in ("__init__", "common"):
      continue
    walk(configs.load(name), "")
  return keys


def _expand(key):
  """``a.{b,c}`` -> ``a.b``, ``a.c``."""
  m = re.match(r"(.*?)\{([\w,\s]+)\}(.*)", key, re.S)
  if not m:
    return [key]
  return [k for part in m.group(2).split(",") for k in _expand(m.group(1) + part.strip() + m.group(3))]


def test_config_keys_the_docs_name_exist():
  """``--config.<key>=`` and ``config.<key>`` in the README and the docs are keys
  of some config: a renamed key left in the text fails here."""
  keys = _all_config_keys()
  stale = set()
  for path in [README] + PAGES:
    text = open(path, encoding="utf-8").read()
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    for span in re.findall(r"`([^`]+)`", prose) + re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M):
      for key in re.findall(r"(?<![\w.])(?:--)?config\.([\w.]*\w(?:\.\{[\w,\s]+\})?)", span):
        stale.update(f"{_rel(path)}: config.{k}" for k in _expand(key) if k not in keys)
  assert not stale, "config keys no config has:\n" + "\n".join(sorted(stale))
