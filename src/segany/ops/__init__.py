"""Pure tensor and array operations shared by inference, training and evaluation."""
