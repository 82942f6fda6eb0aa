"""labsupport: the support package of the Cloud AI System Design Patterns course.

One mechanism module per pattern, named after it (``load_balancing`` backs
``02_load_balancing.ipynb``): the pattern a learner reads, and nothing else. Each
pattern's other layers have the same name in a sub-package:

- ``checks``: the step, scenario and quiz checkers;
- ``explore``: figures and widget callbacks;
- ``services``: HTTP services and worker processes, with their command line;
- ``bench``: benchmarks for ``make bench``;
- ``solutions``: the answer key.

Shared foundations: ``exercises`` (the exercise contract and progress), ``quiz`` (review
quizzes), ``fresh_process`` (run learner code in a new process), ``embeddings`` (the
offline model), ``plots`` (the course's plotly style) and ``servers`` (a FastAPI app
served on 127.0.0.1 from a notebook). ``start_here`` backs ``00_start_here.ipynb``.
Import modules explicitly: ``from labsupport import load_balancing as lb``.
"""

__version__ = "0.1.0"
