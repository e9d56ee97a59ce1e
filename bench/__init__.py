"""Benchmarks: the service beside the in-process ceiling, a hand-written server and TorchServe.

``python -m bench`` starts every system it measures on the same CPU cores, drives each with the
same load generators on other cores, stops them, and writes a JSON file, a Markdown report and a
p99-latency-against-throughput plot.
"""
