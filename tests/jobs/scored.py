"""A job for sweep tests: logs ``score`` = quality * step / steps once per step, slowly enough
for a sweep to watch it (and prune it) while it runs."""

import time

import ferry.runtime as fr

ctx = fr.init()
quality, steps, pause = float(ctx.hparam("quality", 1.0)), int(ctx.hparam("steps", 6)), float(ctx.hparam("pause", 0.4))
with fr.Tracker(is_primary=ctx.is_primary, flush_interval=0.2) as tracker:
    for step in range(1, steps + 1):
        tracker.log_metrics({"score": quality * step / steps}, step)
        time.sleep(pause)
fr.shutdown()
