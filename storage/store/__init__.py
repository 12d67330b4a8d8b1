"""The Zarr stores and what keeps them whole: image and heatmap stores, tables, locations, the
writer lease, verification, status and shard planning."""
