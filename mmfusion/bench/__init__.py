"""`mmfusion bench`: the original design (`reference`) against the optimized path, PyTorch against ONNX Runtime.

    runner.py     run_bench, BenchSettings: the data, the model and its copies, the phases in order
    reference.py  the original design, kept only as the baseline
    measure.py    one PyTorch path measured: training and inference samples/s, a profiled step
    engines.py    eager PyTorch vs ONNX Runtime (fp32, int8, fused): latency, throughput, agreement
    memory.py     PeakRSS: the peak resident memory a phase adds
    report.py     the goals and the printed tables
"""
