"""Make a registered model cheaper to serve: int8 quantization, magnitude pruning, knowledge
distillation and ONNX export. Every candidate is measured side by side with its source
(metric on the job's held-out split, latency p50/p99 at batch 1 and 32, throughput, size,
parameters, sparsity), logged to MLflow and registered as a new version of the same model,
ready for the same promotion gates as any other version.

    from ferry.optimize import optimize, PruneOptions
    result = optimize("models:/digits-classifier/3", quantize="int8", onnx=True,
                      prune=PruneOptions(amount=0.5))
"""

from ferry.optimize._measure import Measurement
from ferry.optimize._optimize import Candidate, OptimizeResult, PruneOptions, optimize
from ferry.optimize._report import rich_table

__all__ = ["Candidate", "Measurement", "OptimizeResult", "PruneOptions", "optimize", "rich_table"]
