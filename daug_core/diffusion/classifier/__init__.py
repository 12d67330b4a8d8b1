"""The noise-aware classifier p(y | x_t, t): ours and guided-diffusion's encoder, their factory,
loss, training loop and per-noise-level evaluation."""
