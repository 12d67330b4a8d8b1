"""The file names of the checkpoint layout (torch-free, so the CLI can check a path before it
loads the models)."""

from __future__ import annotations

MODEL_JSON = "model.json"
MODEL_WEIGHTS = "model.safetensors"
MANIFEST = "SHA256SUMS.json"
TRAINER_STATE = "trainer_state"
# A train-generator output folder holds one checkpoint directory per model.
GENERATOR_DIR, CLASSIFIER_DIR = "generator", "classifier"
# The generator's weights are diffusers UNets, saved the way diffusers saves them.
UNET_DIR, UNET_EMA_DIR = "unet", "unet_ema"
# The header of a contrastive checkpoint: model.json, or clip.json in the first layout; both
# hold "config", "heatmap_targets" and "info" at their top level.
CLIP_HEADERS: tuple[str, ...] = (MODEL_JSON, "clip.json")
