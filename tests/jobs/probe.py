"""A tiny distributed job for executor tests: all-reduces its rank and prints what it saw."""

import json
import os
import sys

import ferry.runtime as fr

KEYS = ["MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "PET_NNODES", "PET_NODE_RANK", "PET_NPROC_PER_NODE",
        "PET_MASTER_ADDR", "PET_MASTER_PORT", "FERRY_SUBMISSION_ID", "FERRY_JOB_NAME", "MLFLOW_EXPERIMENT_NAME"]

ctx = fr.init()
(total,) = ctx.all_reduce_sum(float(ctx.rank))
# One write per line: torchrun's children share the pod's stdout pipe, and print() would issue
# the text and the newline as two writes that another process's line can land between.
sys.stdout.write("PROBE " + json.dumps({"rank": ctx.rank, "sum": total, "env": {k: os.environ.get(k) for k in KEYS}}) + "\n")
sys.stdout.flush()
fr.shutdown()
