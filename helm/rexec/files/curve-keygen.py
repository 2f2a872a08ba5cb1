"""Create the broker's CurveZMQ key Secret once; never replace an existing one.

Run by the chart's key-generation Job with its ServiceAccount (RBAC: get that Secret, create
Secrets in the release namespace). Needs only the standard library and pyzmq, which every Rexec
image has. Exit 0 when the Secret exists afterwards (created now, or already there).

Settings: REXEC_CURVE_SECRET (the Secret's name), KUBERNETES_SERVICE_HOST/PORT (set by
Kubernetes), REXEC_KEYGEN_SA_DIR (default: the pod's service-account mount).
"""

import base64
import json
import os
import ssl
import sys
import urllib.error
import urllib.request

import zmq

SA_DIR = os.environ.get("REXEC_KEYGEN_SA_DIR", "/var/run/secrets/kubernetes.io/serviceaccount")
TIMEOUT = 20


def read(name: str) -> str:
    with open(os.path.join(SA_DIR, name)) as f:
        return f.read().strip()


def request(
    method: str, url: str, token: str, context: ssl.SSLContext, body: dict | None = None
) -> int:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", "Bearer " + token)
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, context=context, timeout=TIMEOUT) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def main() -> int:
    name = os.environ["REXEC_CURVE_SECRET"]
    namespace = read("namespace")
    token = read("token")
    context = ssl.create_default_context(cafile=os.path.join(SA_DIR, "ca.crt"))
    host = os.environ["KUBERNETES_SERVICE_HOST"]
    if ":" in host:
        host = f"[{host}]"
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    base = f"https://{host}:{port}/api/v1/namespaces/{namespace}/secrets"
    status = request("GET", base + "/" + name, token, context)
    if status == 200:
        print(f"Secret {namespace}/{name} exists; keeping its keys")
        return 0
    if status != 404:
        print(f"cannot read Secret {namespace}/{name}: HTTP {status}", file=sys.stderr)
        return 1
    public, secret = zmq.curve_keypair()
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "labels": json.loads(os.environ.get("REXEC_CURVE_SECRET_LABELS", "{}")),
        },
        "type": "Opaque",
        "data": {
            "broker.key": base64.b64encode(secret).decode(),
            "broker.pub": base64.b64encode(public).decode(),
        },
    }
    status = request("POST", base, token, context, body)
    if status in (201, 409):  # 409: another run created it first; its keys win
        print(f"Secret {namespace}/{name} ready (broker public key {public.decode()})")
        return 0
    print(f"cannot create Secret {namespace}/{name}: HTTP {status}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
