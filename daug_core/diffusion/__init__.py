"""The diffusion side of DAug: noise schedule, DDIM inversion and decoding, classifier guidance,
the generator, the noise-aware classifier and the heatmaps they make."""
