"""Metrics as pure functions: classification AUC, retrieval, heatmap localisation, bootstrap
intervals and the study's statistics."""
