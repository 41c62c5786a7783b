"""Inference on top of the model: the interactive predictor and the automatic mask generator."""
