"""NVIDIA Triton through PyTriton, serving a torch.export program with ``@batch`` dynamic batching.

    python _pytriton_server.py MODEL.pt2 HTTP_PORT GRPC_PORT

Run by ``serve_bench.py`` with an interpreter that has ``nvidia-pytriton`` and torch (PyTriton
0.7 needs Python 3.12 and ``LD_LIBRARY_PATH`` at that Python's ``libpython3.12.so``). The
model is the same artifact Ferry serves; its input is ``x`` (FP32, [N, 1, 8, 8]), its output
``y`` (FP32, [N, 10]). Batching as Ferry's defaults: up to 32 rows, and a batch takes what is
queued without waiting for more (Triton's dynamic batcher with no queue delay).
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


def main() -> None:
    path, http_port, grpc_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    module = torch.export.load(path).module()

    @batch
    def infer(x: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            return {"y": module(torch.from_numpy(x)).numpy()}

    config = TritonConfig(http_address="127.0.0.1", http_port=http_port, grpc_address="127.0.0.1", grpc_port=grpc_port,
                          metrics_port=0, allow_metrics=False)
    with Triton(config=config) as triton:
        triton.bind(model_name="bench-digits", infer_func=infer,
                    inputs=[Tensor(name="x", dtype=np.float32, shape=(1, 8, 8))],
                    outputs=[Tensor(name="y", dtype=np.float32, shape=(10,))],
                    config=ModelConfig(max_batch_size=32, batcher=DynamicBatcher()))
        triton.serve()


if __name__ == "__main__":
    main()
