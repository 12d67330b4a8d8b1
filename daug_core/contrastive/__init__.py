"""DAug's image-text model: open_clip with heatmap channels, the hybrid contrastive loss, its
training loop and the Hugging Face CLIP converter."""
