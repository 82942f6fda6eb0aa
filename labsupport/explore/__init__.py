"""Figures and widget callbacks, one module per notebook (the "Explore" sections).

Each callback is a plain function, also called once directly in the notebook so that it
reads without a kernel. Explore modules use the mechanism; never the other way round.
"""
