"""Heatmap quality against ground truth: scoring (:mod:`~flows.quality.scoring`), the timed
sweep (:mod:`~flows.quality.sweep`) and the ``heatmap-quality`` flow (:mod:`~flows.quality.flow`).
"""
