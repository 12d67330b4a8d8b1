"""Release readers, Zarr stores and tables: everything that touches files on disk.

Imports point one way: ``flows -> storage``; this package never imports Prefect or Ray.
"""
