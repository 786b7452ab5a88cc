"""`helm test`: the store is reachable and writable, and the WorkflowTemplate exists.

Runs in the seal image with the workflow's S3 environment. Prints one line per check and exits
non-zero on the first failure, naming what to fix. Never prints credentials.
"""

import json
import os
import ssl
import sys
import urllib.error
import urllib.request

from seal.errors import SealError
from seal.store import open_store

store_uri = os.environ["SEAL_STORE"]
try:
    store = open_store(store_uri)
    store.exists(".seal-helm-test/probe")  # HEAD: a missing bucket or bad credentials fail here
    store.write_bytes(".seal-helm-test/probe", b"ok\n")
    store.delete(".seal-helm-test/probe")
except SealError as e:
    sys.exit(f"FAIL store {store_uri}: {e}")
print(f"ok   store {store_uri} is reachable and writable")

api = os.environ.get("SEAL_KUBE_API", "https://kubernetes.default.svc")
sa = os.environ.get("SEAL_SA_DIR", "/var/run/secrets/kubernetes.io/serviceaccount")
namespace, name = os.environ["SEAL_NAMESPACE"], os.environ["SEAL_WORKFLOW_TEMPLATE"]
url = f"{api}/apis/argoproj.io/v1alpha1/namespaces/{namespace}/workflowtemplates/{name}"
with open(f"{sa}/token") as f:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {f.read().strip()}"})
context = ssl.create_default_context(cafile=f"{sa}/ca.crt") if api.startswith("https:") else None
try:
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        template = json.load(response)
except urllib.error.HTTPError as e:
    sys.exit(f"FAIL WorkflowTemplate {namespace}/{name}: HTTP {e.code} (404: not installed; 403: "
             "the test's Role lacks get on workflowtemplates)")
except OSError as e:
    sys.exit(f"FAIL WorkflowTemplate {namespace}/{name}: Kubernetes API unreachable ({e})")
entry = template.get("spec", {}).get("entrypoint")
if not entry:
    sys.exit(f"FAIL WorkflowTemplate {namespace}/{name} has no entrypoint")
print(f"ok   WorkflowTemplate {namespace}/{name} exists (entrypoint {entry})")
