"""The checkers, one module per notebook: step, scenario and quiz checks.

``labsupport.checks.load_balancing`` judges the exercises of ``02_load_balancing.ipynb``.
Checks use the mechanism modules; the mechanism modules never import checks.
"""
