"""Checkpoints of every model in one layout, written atomically, verified before use.

A checkpoint is a directory::

    model.json            the header: {"format_version": 2, "kind": ..., "config": {...}, ...}
    model.safetensors     the weights (the generator: diffusers' unet/ and unet_ema/ instead,
                          each UNet2DModel.save_pretrained: config.json + safetensors)
    SHA256SUMS.json       every file's sha256, checked before anything is loaded
    trainer_state.*       optional: optimizer tensors, RNG state and step, to resume training

:mod:`~daug_core.checkpoints.layout` writes and reads that layout (``save_pretrained`` /
``load_pretrained``, as diffusers' ``ModelMixin`` does for one model) and reads the first
layouts (``classifier.json``, ``encoder.json``, ``eps.json``, ``clip.json``, a generator's
config in its trainer state) as the same header; :mod:`~daug_core.checkpoints.manifest` writes
and checks ``SHA256SUMS.json`` (torch-free); :mod:`~daug_core.checkpoints.foreign` reads and
checks the weights files the converters take in; :mod:`~daug_core.checkpoints.diffusion` and
:mod:`~daug_core.checkpoints.contrastive` turn headers and weights into models. No pickle is
written or read; loading is local-only (works with HF_HUB_OFFLINE=1).
"""
