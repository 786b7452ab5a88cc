#!/usr/bin/env bash
# End-to-end on a laptop cluster: `make kind-e2e` / `make minikube-e2e`, or
#   tests/e2e/run.sh kind|minikube
#
# Creates a cluster, builds the CPU image and loads it into the cluster, installs Argo Workflows
# and an S3 server (SeaweedFS), installs the chart (helm/seal with tests/e2e/values-kind.yaml),
# runs `helm test`, submits the chart's WorkflowTemplate (workflows/restem.yaml) for 2 rounds on
# a tiny model, waits for it, and checks the store. Needs docker, kubectl, helm and kind or
# minikube. KEEP_CLUSTER=1 keeps the cluster afterwards; ARGO_VERSION picks Argo's release.
set -euo pipefail
cd "$(dirname "$0")/../.."

DRIVER=${1:-kind}
CLUSTER=${CLUSTER:-seal-e2e}
NS=seal-e2e
RELEASE=seal-e2e                        # the chart's full name is the release name (it contains "seal")
IMAGE=seal-cpu:e2e
ARGO_VERSION=${ARGO_VERSION:-v3.6.2}
ARGO_MANIFEST=${ARGO_MANIFEST:-https://github.com/argoproj/argo-workflows/releases/download/${ARGO_VERSION}/install.yaml}
TIMEOUT_S=${E2E_TIMEOUT_S:-1800}
RUN_ID=e2e-$(date +%s)

say() { printf '\n=== %s\n' "$*"; }
need() { command -v "$1" >/dev/null || { echo "e2e: '$1' is not installed" >&2; exit 2; }; }
for tool in docker kubectl helm "$DRIVER"; do need "$tool"; done
case "$DRIVER" in kind|minikube) ;; *) echo "usage: $0 kind|minikube" >&2; exit 2 ;; esac

cleanup() {
  if [[ "${KEEP_CLUSTER:-0}" == 1 ]]; then
    echo "kept cluster $CLUSTER (delete: $DRIVER delete $([[ $DRIVER == kind ]] && echo cluster --name || echo -p) $CLUSTER)"
  elif [[ "$DRIVER" == kind ]]; then kind delete cluster --name "$CLUSTER"
  else minikube delete -p "$CLUSTER"; fi
}

say "cluster ($DRIVER: $CLUSTER)"
if [[ "$DRIVER" == kind ]]; then
  kind get clusters 2>/dev/null | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 180s
  kubectl config use-context "kind-$CLUSTER"
else
  minikube status -p "$CLUSTER" >/dev/null 2>&1 || minikube start -p "$CLUSTER" --cpus 2 --memory 6g
  kubectl config use-context "$CLUSTER"
fi
trap cleanup EXIT

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
kubectl -n "$NS" delete job make-bucket --ignore-not-found
kubectl -n "$NS" apply -f - <<YAML
apiVersion: batch/v1
kind: Job
metadata: {name: make-bucket}
spec:
  backoffLimit: 6
  template:
    spec:
      restartPolicy: OnFailure
      securityContext: {runAsNonRoot: true, runAsUser: 10001}
      containers:
        - name: make-bucket
          image: $IMAGE
          imagePullPolicy: Never
          envFrom: [{secretRef: {name: $RELEASE-s3}}]
          env: [{name: AWS_ENDPOINT_URL, value: "http://seaweedfs.$NS.svc.cluster.local:8333"},
                {name: AWS_REGION, value: us-east-1}]
          command: [python, -c, "import boto3; c = boto3.client('s3'); b = 'seal-e2e'; b in [x['Name'] for x in c.list_buckets()['Buckets']] or c.create_bucket(Bucket=b); print('bucket', b)"]
YAML
kubectl -n "$NS" wait --for=condition=complete job/make-bucket --timeout=300s

say "helm test"
helm test "$RELEASE" -n "$NS" --logs

say "submit run $RUN_ID (2 rounds, tiny model)"
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
deadline=$((SECONDS + TIMEOUT_S))
while :; do
  phase=$(kubectl -n "$NS" get "$WF" -o jsonpath='{.status.phase}')
  case "$phase" in
    Succeeded) break ;;
    Failed|Error)
      kubectl -n "$NS" get "$WF" -o yaml | sed -n '/^status:/,$p' | head -100
      kubectl -n "$NS" get pods -l workflows.argoproj.io/workflow="${WF#*/}"
      echo "e2e: workflow $WF ended $phase" >&2; exit 1 ;;
  esac
  (( SECONDS < deadline )) || { echo "e2e: workflow $WF still '$phase' after ${TIMEOUT_S}s" >&2; exit 1; }
  sleep 10
done
echo "workflow $WF succeeded"

say "store check"
kubectl -n "$NS" delete job check-store --ignore-not-found
kubectl -n "$NS" apply -f - <<YAML
apiVersion: batch/v1
kind: Job
metadata: {name: check-store}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      securityContext: {runAsNonRoot: true, runAsUser: 10001}
      containers:
        - name: check
          image: $IMAGE
          imagePullPolicy: Never
          envFrom: [{secretRef: {name: $RELEASE-s3}}]
          env: [{name: AWS_ENDPOINT_URL, value: "http://seaweedfs.$NS.svc.cluster.local:8333"},
                {name: AWS_REGION, value: us-east-1}, {name: RUN, value: "s3://seal-e2e/runs/$RUN_ID"}]
          command: [python, -c]
          args:
            - |
              import os
              from seal.store import open_store
              run = open_store(os.environ["RUN"])
              meta = run.read_json("run.json")
              assert meta["status"] == "succeeded", meta.get("status")
              for r in (0, 1):
                  s = run.read_json(f"round-{r}/summary.json")
                  assert s["candidates"] == 6 and s["kept"] >= 1, s
                  assert run.exists(f"round-{r}/policy"), r
                  print(f"round {r}: {s['candidates']} candidates, mean reward {s['mean_reward']:.3f}, kept {s['kept']}")
              print("store ok:", os.environ["RUN"])
YAML
if ! kubectl -n "$NS" wait --for=condition=complete job/check-store --timeout=300s; then
  kubectl -n "$NS" logs job/check-store; exit 1
fi
kubectl -n "$NS" logs job/check-store
say "e2e passed ($DRIVER)"
