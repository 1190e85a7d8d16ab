"""Export stage: dense and sparse safetensors, ONNX and its weight storage, structured shrink."""
