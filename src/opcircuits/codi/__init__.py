"""CODI models: config, checkpoint loading, the latent loop (torch lives here and in extract.py)."""
