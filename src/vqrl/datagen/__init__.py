"""Synthetic perception data for Stage-1 training: distortions (distortions.py) and records (perception.py).

Must not import anything heavy at package import: `vqrl make-perception-data` and the tests import submodules.
"""
