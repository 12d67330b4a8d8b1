"""Training data streamed from a store: diffusion batches and the contrastive Dataset."""
