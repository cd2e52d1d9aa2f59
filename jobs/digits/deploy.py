"""Serving the digits classifier: the champion version, on Ferry's runtime.

    ferry deploy jobs/digits/deploy.py -o manifests/     # resolves @champion to a pinned version
"""

from ferry import Autoscaling, Deployment, Resources

# Serverless (Knative): scale on in-flight requests per replica, down to zero when idle.
web = Deployment(
    name="digits",
    model="models:/digits-classifier@champion",
    resources=Resources(cpu="1", memory="1Gi"),
    autoscaling=Autoscaling(min_replicas=0, max_replicas=5, metric="concurrency", target=32),
)

# Standard (raw Deployment) on GPUs: KEDA scales on DCGM GPU utilization from Prometheus.
gpu = Deployment(
    name="digits-gpu",
    model="models:/digits-classifier@champion",
    mode="standard",
    resources=Resources(cpu="4", memory="16Gi", gpu=1),
    autoscaling=Autoscaling(min_replicas=1, max_replicas=8, metric="gpu-utilization", target=70,
                            scale_down_stabilization_seconds=600),
)
