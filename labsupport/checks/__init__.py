"""The checkers, one module per notebook: step, scenario and quiz checks.

``labsupport.checks.load_balancing`` judges the exercises of ``02_load_balancing.ipynb``.
A notebook whose step checks would make its module too long keeps them beside it
(``api_communication_steps.py``); the notebook still imports only ``checks.<pattern>``.
Checks use the mechanism modules; the mechanism modules never import checks.
"""
