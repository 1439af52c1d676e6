"""Using a trained model: the one inference path, the Predictor, export, benchmark, pictures of label maps."""
