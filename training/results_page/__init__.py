"""The results page (``python -m training results-page``): ``docs/results.md`` and its PNG
plots, rendered from a study's ``results.json`` and stage files.

``data.py`` reads the study and its plan (every planned row, measured or not); ``paper.py``
holds the paper's figures; ``tables.py`` and ``sections.py`` write the tables and the
paragraphs generated from their numbers; ``plots.py`` draws; ``page.py`` assembles.
"""

from .page import render_page

__all__ = ["render_page"]
