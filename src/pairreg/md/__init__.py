"""Molecular dynamics with a trained model (through ASE) and a stability report.

``stability.py`` holds the pure geometry and energy checks; ``run.py`` drives ASE's integrators, writes the
trajectory and assembles the report that ``pairreg md`` prints.
"""
