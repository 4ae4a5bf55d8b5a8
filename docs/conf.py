"""Sphinx configuration: MyST pages, an API reference generated from the docstrings and the
tutorials as executed notebooks; built offline (no intersphinx) with warnings as errors."""

import os
import re
from importlib.metadata import version as _version
from pathlib import Path

DOCS = Path(__file__).parent
ROOT = DOCS.parent
#: The real datasets the integration tutorial reads (never shipped; see tests/conftest.py).
SHARED_DATA = Path(os.environ.get("SCDLKIT_SHARED_DATA", ROOT.parent / "shared" / "data"))
#: Tutorials that read a real dataset from SHARED_DATA, by their file stem.
SHARED_DATA_TUTORIALS = {
    "integration": "pbmc_3tech_batches_counts.h5ad",
    "reference_mapping": "pbmc_3tech_batches_counts.h5ad",
}

project = "scdlkit"
author = "scdlkit developers"
copyright = "2026, scdlkit developers"
release = _version("scdlkit")

extensions = [
    "myst_nb",  # includes myst_parser: MyST pages plus notebooks in jupytext Markdown
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb"}  # .rst: the generated API pages
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3
exclude_patterns = ["_build", "_templates", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]
# pages refer to repository files outside the site (../src/..., ../tutorials/...)
suppress_warnings = ["myst.xref_missing"]

# -- API reference -------------------------------------------------------------------------------
autosummary_generate = True
autosummary_ignore_module_all = False  # list exactly each module's __all__
autosummary_imported_members = True  # the public names are re-exported from private modules
autodoc_member_order = "bysource"
autodoc_default_options = {"show-inheritance": True}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_ivar = False
# type hints rendered from the signatures into the parameter descriptions (sphinx-autodoc-typehints
# 3.6 inserts its fields into the doctest blocks of the Examples sections and is deprecated under
# Sphinx 9, so autodoc's own rendering is used)
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"

# -- Tutorials (myst-nb) -------------------------------------------------------------------------
# Each tutorials/*.md (jupytext Markdown) is copied to docs/tutorials/ at build time, its links to
# ../docs/ rewritten for the site; the copies are build products (.gitignore).
nb_execution_mode = "cache"  # the test suite builds with -D nb_execution_mode=off
nb_execution_cache_path = str(DOCS / "_build" / ".jupyter_cache")
nb_execution_raise_on_error = True  # a failing cell fails the build
nb_execution_timeout = 600
nb_execution_in_temp = True  # files a tutorial writes land in a temporary folder
nb_execution_excludepatterns = []
nb_merge_streams = True


def _copy_tutorials() -> None:
    target = DOCS / "tutorials"
    target.mkdir(exist_ok=True)
    sources = sorted((ROOT / "tutorials").glob("*.md"))
    for stale in set(target.glob("*.md")) - {target / s.name for s in sources}:
        stale.unlink()
    for source in sources:
        text = re.sub(r"\]\(\.\./docs/", "](../", source.read_text())
        copy = target / source.name
        if not copy.is_file() or copy.read_text() != text:  # keep mtimes: incremental builds
            copy.write_text(text)
        data = SHARED_DATA_TUTORIALS.get(source.stem)
        if data is not None and not (SHARED_DATA / data).is_file():
            # the dataset is absent: the page is shown without outputs instead of failing
            nb_execution_excludepatterns.append(f"tutorials/{source.name}")


_copy_tutorials()
if SHARED_DATA.is_dir():
    os.environ.setdefault("SCDLKIT_SHARED_DATA", str(SHARED_DATA))  # the kernels inherit it
if "OMP_NUM_THREADS" in os.environ:
    # scanpy's numba kernels would raise OpenMP's thread count, shared with torch, to every core
    os.environ.setdefault("NUMBA_NUM_THREADS", os.environ["OMP_NUM_THREADS"])

# -- HTML ------------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = "scdlkit"
html_static_path = []
html_theme_options = {
    "logo": {"text": "scdlkit"},
    "use_edit_page_button": False,
    "use_repository_button": False,
    "use_source_button": False,
    "use_download_button": False,
    "use_issues_button": False,
    "home_page_in_toc": True,
    "show_toc_level": 2,
}
html_show_sourcelink = False


def _skip_namedtuple_fields(app, what, name, obj, skip, options):
    """NamedTuple fields are documented by the class's ``Attributes`` section, not twice."""
    doc = getattr(obj, "__doc__", None) or ""
    if what == "class" and doc.startswith("Alias for field number"):
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_namedtuple_fields)
