"""The heatmap student: one forward pass from an image to its K heatmaps, trained to
reproduce a teacher heatmap version (guided-diffusion heatmaps, thousands of model calls an
image) at a small fraction of the cost."""
