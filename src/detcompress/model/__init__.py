"""The detector: built from its config, weights loaded from checkpoints (safely), and a trained
detector turned back into a model from its checkpoint alone."""
