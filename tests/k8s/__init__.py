"""The `k8s` test tier: a real Kubernetes control plane on 127.0.0.1 plus a test node agent."""
