"""`mmfusion bench`: the original design (`reference`) against the optimized path, PyTorch against ONNX Runtime."""
