"""The layer that talks to the Kubernetes API, below both the operator and the activator.

``kube`` is the one REST facade; ``owners``, ``peering`` and ``wake`` are the small pieces of
cluster knowledge both processes share (owner references, Kopf's peering records, the wake-up
from zero).
"""
