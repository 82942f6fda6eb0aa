"""labsupport: the support package of the Cloud AI System Design Patterns course.

One module per pattern, named after it (``load_balancing`` backs
``02_load_balancing.ipynb``), plus three shared helpers: ``exercises`` (checking and
progress), ``embeddings`` (the offline model) and ``plots`` (the course's plotly style).
Import modules explicitly: ``from labsupport import load_balancing as lb``.
"""

__version__ = "0.1.0"
