"""CODI training: the loop (`loop`), the loss (`objective`), the examples it learns from
(`examples`), its resumable state (`state`) and a small base to train from scratch (`base`)."""
