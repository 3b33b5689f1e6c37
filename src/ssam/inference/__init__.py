"""Using a tuned model: the predictor, input and output files, label maps, overlays, merge, ONNX."""
