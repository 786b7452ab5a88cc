#!/usr/bin/env bash
# End-to-end on a laptop cluster: `make kind-e2e` / `make minikube-e2e`, or
#   tests/e2e/run.sh kind|minikube
#
# Creates a cluster, builds the CPU image and loads it into the cluster, installs Argo Workflows
# and an S3 server (SeaweedFS), then runs 2 ReSTEM rounds on a tiny model twice:
#   1. the chart: helm/seal with tests/e2e/values-kind.yaml, `helm test`, the WorkflowTemplate;
#   2. direct submission, as the README does it: workflows/cluster.yaml and the S3 Secret in a
#      namespace of their own, restem.yaml filled by `seal submit --print` (resources lowered to
#      fit a laptop), one adapt pod deleted while it runs (it must be retried), and the deadlines
#      the controller gave the pods checked (the template's activeDeadlineSeconds, no 30-minute
#      executor deadline).
# Each run's store is checked. Needs docker, kubectl, helm, kind or minikube, and this checkout's
# .venv (`make install`; PYTHON=... for another interpreter with seal importable). KEEP_CLUSTER=1
# keeps the cluster; ARGO_VERSION picks Argo's release; on failure the pods' logs, the workflows'
# status and the events are saved under E2E_LOGS (default .seal/e2e-logs) before the cluster goes.
# Memory: Argo, SeaweedFS and two stage pods at a time (values-kind.yaml: parallelism 2, 1.5 Gi
# limits) fit the 6 GB minikube VM below, or kind on an 8 GB laptop.
set -euo pipefail
cd "$(dirname "$0")/../.."

DRIVER=${1:-kind}
CLUSTER=${CLUSTER:-seal-e2e}
NS=seal-e2e
DIRECT_NS=seal-e2e-direct
RELEASE=seal-e2e                        # the chart's full name is the release name (it contains "seal")
IMAGE=seal-cpu:e2e
ARGO_VERSION=${ARGO_VERSION:-v4.1.2}   # a current release; 3.6 before 3.6.5 lost task results with podGC
ARGO_MANIFEST=${ARGO_MANIFEST:-https://github.com/argoproj/argo-workflows/releases/download/${ARGO_VERSION}/install.yaml}
TIMEOUT_S=${E2E_TIMEOUT_S:-1800}
LOGS=${E2E_LOGS:-.seal/e2e-logs}
PY=${PYTHON:-.venv/bin/python}
RUN_ID=e2e-$(date +%s)
S3_ENDPOINT=http://seaweedfs.$NS.svc.cluster.local:8333

say() { printf '\n=== %s\n' "$*"; }
fail() { echo "e2e: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null || { echo "e2e: '$1' is not installed" >&2; exit 2; }; }
case "$DRIVER" in kind|minikube) ;; *) echo "usage: $0 kind|minikube" >&2; exit 2 ;; esac
for tool in docker kubectl helm "$DRIVER"; do need "$tool"; done
"$PY" -c "import seal.cli, yaml" 2>/dev/null || { echo "e2e: $PY cannot import seal: run make install (or set PYTHON)" >&2; exit 2; }

# Everything a failed run leaves behind, saved before the cluster is deleted.
collect() {
  mkdir -p "$LOGS"
  echo "e2e: saving diagnostics to $LOGS" >&2
  kubectl get pods -A -o wide >"$LOGS/pods.txt" 2>&1 || true
  kubectl get events -A --sort-by=.lastTimestamp >"$LOGS/events.txt" 2>&1 || true
  kubectl -n argo logs deployment/workflow-controller --tail=2000 >"$LOGS/workflow-controller.log" 2>&1 || true
  local ns pod
  for ns in "$NS" "$DIRECT_NS"; do
    kubectl -n "$ns" get workflows -o yaml >"$LOGS/$ns-workflows.yaml" 2>&1 || true
    for pod in $(kubectl -n "$ns" get pods -o name 2>/dev/null); do
      kubectl -n "$ns" logs "$pod" --all-containers --prefix --tail=500 >"$LOGS/$ns-${pod#pod/}.log" 2>&1 || true
    done
  done
  tail -n 40 "$LOGS/events.txt" >&2 || true
}

cleanup() {
  if [[ "${KEEP_CLUSTER:-0}" == 1 ]]; then
    echo "kept cluster $CLUSTER (delete: $DRIVER delete $([[ $DRIVER == kind ]] && echo cluster --name || echo -p) $CLUSTER)"
  elif [[ "$DRIVER" == kind ]]; then kind delete cluster --name "$CLUSTER"
  else minikube delete -p "$CLUSTER"; fi
}

on_exit() {
  local rc=$?
  trap - EXIT
  if ((rc != 0)); then collect; fi
  cleanup
  exit "$rc"
}

# A Job's outcome as soon as it has one (Complete or Failed), not after the whole timeout.
wait_job() {
  local ns=$1 job=$2 timeout=$3 state deadline=$((SECONDS + $3))
  while :; do
    state=$(kubectl -n "$ns" get "job/$job" -o jsonpath='{range .status.conditions[?(@.status=="True")]}{.type}{" "}{end}')
    case " $state " in
      *" Complete "*) kubectl -n "$ns" logs "job/$job"; return 0 ;;
      *" Failed "*) kubectl -n "$ns" logs "job/$job" || true; fail "job $job failed" ;;
    esac
    ((SECONDS < deadline)) || { kubectl -n "$ns" logs "job/$job" || true; fail "job $job not done after ${timeout}s"; }
    sleep 3
  done
}

# A workflow's end; Failed or Error ends the script (the trap collects its pods' logs).
wait_workflow() {
  local ns=$1 wf=$2 phase deadline=$((SECONDS + TIMEOUT_S))
  while :; do
    phase=$(kubectl -n "$ns" get "$wf" -o jsonpath='{.status.phase}')
    case "$phase" in
      Succeeded) echo "workflow $wf succeeded"; return 0 ;;
      Failed|Error)
        kubectl -n "$ns" get "$wf" -o jsonpath='{.status.message}{"\n"}' >&2
        fail "workflow $wf ended $phase" ;;
    esac
    ((SECONDS < deadline)) || fail "workflow $wf still '$phase' after ${TIMEOUT_S}s"
    sleep 10
  done
}

# A Job running seal's image with the S3 settings: make the bucket, or check a run's store.
s3_job() {
  local ns=$1 name=$2 secret=$3 script=$4
  kubectl -n "$ns" delete job "$name" --ignore-not-found
  kubectl -n "$ns" apply -f - <<YAML
apiVersion: batch/v1
kind: Job
metadata: {name: $name}
spec:
  backoffLimit: 2
  template:
    spec:
      restartPolicy: Never
      securityContext: {runAsNonRoot: true, runAsUser: 10001}
      containers:
        - name: $name
          image: $IMAGE
          imagePullPolicy: Never
          envFrom: [{secretRef: {name: $secret}}]
          env: [{name: AWS_ENDPOINT_URL, value: "$S3_ENDPOINT"}, {name: AWS_REGION, value: us-east-1}]
          command: [python, -c, $(printf '%s' "$script" | "$PY" -c 'import json, sys; print(json.dumps(sys.stdin.read()))')]
YAML
  wait_job "$ns" "$name" 300
}

check_store() {  # namespace, Secret, run URI
  s3_job "$1" check-store "$2" "
from seal.store import open_store
run = open_store('$3')
meta = run.read_json('run.json')
assert meta['status'] == 'succeeded', meta.get('status')
for r in (0, 1):
    s = run.read_json(f'round-{r}/summary.json')
    assert s['candidates'] == 6 and s['kept'] >= 1, s
    assert run.exists(f'round-{r}/policy'), r
    print(f\"round {r}: {s['candidates']} candidates, mean reward {s['mean_reward']:.3f}, kept {s['kept']}\")
print('store ok: $3')"
}

say "cluster ($DRIVER: $CLUSTER)"
trap on_exit EXIT
if [[ "$DRIVER" == kind ]]; then
  kind get clusters 2>/dev/null | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 180s
  kubectl config use-context "kind-$CLUSTER"
else
  minikube status -p "$CLUSTER" >/dev/null 2>&1 || minikube start -p "$CLUSTER" --cpus 2 --memory 6g
  kubectl config use-context "$CLUSTER"
fi

say "image $IMAGE (docker/Dockerfile.cpu, target e2e)"
docker build -f docker/Dockerfile.cpu --target e2e -t "$IMAGE" .
if [[ "$DRIVER" == kind ]]; then kind load docker-image "$IMAGE" --name "$CLUSTER"
else minikube -p "$CLUSTER" image load "$IMAGE"; fi

say "Argo Workflows $ARGO_VERSION"
kubectl create namespace argo --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -n argo --server-side -f "$ARGO_MANIFEST"
kubectl -n argo rollout status deployment/workflow-controller --timeout=300s

say "S3 server (SeaweedFS) in $NS"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -f tests/e2e/seaweedfs.yaml
kubectl -n "$NS" rollout status deployment/seaweedfs --timeout=300s

say "chart helm/seal (release $RELEASE)"
helm upgrade --install "$RELEASE" helm/seal -n "$NS" -f tests/e2e/values-kind.yaml --wait --timeout 5m

say "bucket"
s3_job "$NS" make-bucket "$RELEASE-s3" "
import boto3
c = boto3.client('s3')
b = 'seal-e2e'
b in [x['Name'] for x in c.list_buckets()['Buckets']] or c.create_bucket(Bucket=b)
print('bucket', b)"

say "helm test"
helm test "$RELEASE" -n "$NS" --logs

say "1. the chart's WorkflowTemplate: run $RUN_ID (2 rounds, tiny model)"
WF=$(kubectl -n "$NS" create -o name -f - <<YAML
apiVersion: argoproj.io/v1alpha1
kind: Workflow
metadata: {generateName: seal-e2e-}
spec:
  workflowTemplateRef: {name: $RELEASE}
  arguments:
    parameters:
      - {name: run-id, value: $RUN_ID}
YAML
)
echo "$WF"
wait_workflow "$NS" "$WF"
check_store "$NS" "$RELEASE-s3" "s3://seal-e2e/runs/$RUN_ID"

say "2. direct submission in $DIRECT_NS, as the README does it"
kubectl create namespace "$DIRECT_NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$DIRECT_NS" apply -f workflows/cluster.yaml
kubectl -n "$DIRECT_NS" delete secret seal-s3 --ignore-not-found
kubectl -n "$DIRECT_NS" create secret generic seal-s3 \
  --from-literal=AWS_ACCESS_KEY_ID=seal-e2e --from-literal=AWS_SECRET_ACCESS_KEY=seal-e2e-secret \
  --from-literal=AWS_ENDPOINT_URL="$S3_ENDPOINT" --from-literal=AWS_REGION=us-east-1
DIRECT_ID=$RUN_ID-direct
DIRECT_YAML=$(mktemp)
# The chart's kind values as --set overrides; CPU pods, at most 2 per stage.
mapfile -t SETS < <("$PY" - <<'PY'
import yaml
def flat(d, p=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from flat(v, f"{p}{k}.")
        else:
            yield f"{p}{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
for s in flat(yaml.safe_load(open("tests/e2e/values-kind.yaml"))["runConfig"]["overrides"]):
    print("--set"); print(s)
PY
)
"$PY" -m seal.cli submit configs/demo-cpu.yaml "${SETS[@]}" --set store=s3://seal-e2e/direct --set run_id="$DIRECT_ID" \
  -p image="$IMAGE" -p max-pods-per-stage=2 -p gpu-tolerations='[]' \
  -p sample-gpus=0 -p adapt-gpus=0 -p improve-gpus=0 --print >"$DIRECT_YAML" \
  || fail "seal submit --print refused the direct workflow"
# The one edit the README's path does not make: GPU-sized requests lowered to a laptop's.
"$PY" - "$DIRECT_YAML" <<'PY'
import sys, yaml
path = sys.argv[1]
wf = yaml.safe_load(open(path))
wf["spec"]["parallelism"] = 2
for t in wf["spec"]["templates"]:
    if "container" in t:
        t["container"]["resources"] = {"requests": {"cpu": "100m", "memory": "384Mi"}, "limits": {"memory": "1536Mi"}}
yaml.safe_dump(wf, open(path, "w"), sort_keys=False, width=1000)
PY
DWF=$(kubectl -n "$DIRECT_NS" create -o name -f "$DIRECT_YAML")
rm -f "$DIRECT_YAML"
echo "$DWF"

say "fault: delete the first running adapt pod (a preemption); it must be retried"
victim=""
deadline=$((SECONDS + TIMEOUT_S))
while [[ -z "$victim" ]]; do
  victim=$(kubectl -n "$DIRECT_NS" get pods -l "workflows.argoproj.io/workflow=${DWF#*/}" \
    --field-selector=status.phase=Running -o name | grep -- '-adapt-' | head -n 1 || true)
  phase=$(kubectl -n "$DIRECT_NS" get "$DWF" -o jsonpath='{.status.phase}')
  [[ "$phase" == Failed || "$phase" == Error ]] && fail "workflow $DWF ended $phase before an adapt pod ran"
  ((SECONDS < deadline)) || fail "no adapt pod of $DWF ran within ${TIMEOUT_S}s"
  [[ -n "$victim" ]] || sleep 2
done
ads=$(kubectl -n "$DIRECT_NS" get "$victim" -o jsonpath='{.spec.activeDeadlineSeconds}')
[[ "$ads" == 43200 ]] || fail "$victim: activeDeadlineSeconds $ads, not adapt's 43200 (a template timeout would set less)"
argo_deadline=$(kubectl -n "$DIRECT_NS" get "$victim" -o jsonpath='{.spec.containers[?(@.name=="wait")].env[?(@.name=="ARGO_DEADLINE")].value}')
echo "$victim: activeDeadlineSeconds $ads, executor deadline ${argo_deadline:-none} (the workflow's, 14 days out)"
kubectl -n "$DIRECT_NS" delete "$victim" --wait=false
wait_workflow "$DIRECT_NS" "$DWF"
attempts=$(kubectl -n "$DIRECT_NS" get "$DWF" -o jsonpath='{range .status.nodes.*}{.templateName}{" "}{.type}{"\n"}{end}' | grep -c '^adapt Pod$' || true)
((attempts >= 5)) || fail "$DWF ran $attempts adapt pods: 4 (2 a round) plus the retry expected"
echo "adapt pods: $attempts (the deleted one retried)"
check_store "$DIRECT_NS" seal-s3 "s3://seal-e2e/direct/$DIRECT_ID"
say "e2e passed ($DRIVER)"
