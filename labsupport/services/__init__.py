"""The HTTP services and worker processes of the notebooks that run any, with their CLI.

``python -m labsupport.services.<pattern> --port P`` serves one from the shell, so it can
be hit with curl. Services use the mechanism; the mechanism never imports them.
"""
