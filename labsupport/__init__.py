"""labsupport: the support package of the Cloud AI System Design Patterns course.

One module per pattern, named after it (``load_balancing`` backs
``02_load_balancing.ipynb``), plus four shared helpers: ``exercises`` (checking and
progress), ``embeddings`` (the offline model), ``plots`` (the course's plotly style) and
``servers`` (a FastAPI app served on 127.0.0.1 from a notebook). ``start_here`` backs
``00_start_here.ipynb``.
Import modules explicitly: ``from labsupport import load_balancing as lb``.
"""

__version__ = "0.1.0"
