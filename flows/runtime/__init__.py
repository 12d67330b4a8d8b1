"""The Ray side of the flows: the heatmap actor pool, its shard queue, the heatmap workers and the
Ray Train launcher."""
