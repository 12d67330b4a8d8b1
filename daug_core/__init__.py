"""The math of DAug: a pure library (torch, numpy and the model libraries only).

The diffusion half: typed presets and settings (``config``, ``heatmap_settings``), the DDPM
generator and the noise-aware classifier with their training loops, DDIM inversion and
classifier-guided decoding (``ddim``, ``guidance``), and the per-class heatmaps (``heatmaps``:
the official |minmax(x0) - minmax(x_cf)| or the raw |x0 - x_cf| / 2, optionally blurred, as
``TranslationConfig.difference`` and ``smoothing_sigma`` say). The contrastive half:
``clip_config``, ``clip_model``, ``losses``, ``clip_training``, ``metrics``, ``retrieval``.
``model_input`` maps store pixels to model space for both.

No Prefect, Ray, Zarr or storage imports: flows call these functions and own all file and
cluster handling. Import what you use from its module (``from daug_core.diffusion.ddim import
invert_to_level``); the package itself exports nothing, so ``import daug_core.diffusion.config``
stays
cheap.
"""
