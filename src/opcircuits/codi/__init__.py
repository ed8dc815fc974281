"""CODI models: configuration, checkpoint loading, the latent loop (the only torch code with extract.py)."""
