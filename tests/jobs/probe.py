"""A tiny distributed job for executor tests: all-reduces its rank and prints what it saw."""

import json
import os

import ferry.runtime as fr

KEYS = ["MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "PET_NNODES", "PET_NODE_RANK", "PET_NPROC_PER_NODE",
        "PET_MASTER_ADDR", "PET_MASTER_PORT", "FERRY_SUBMISSION_ID", "FERRY_JOB_NAME", "MLFLOW_EXPERIMENT_NAME"]

ctx = fr.init()
(total,) = ctx.all_reduce_sum(float(ctx.rank))
print("PROBE " + json.dumps({"rank": ctx.rank, "sum": total, "env": {k: os.environ.get(k) for k in KEYS}}), flush=True)
fr.shutdown()
