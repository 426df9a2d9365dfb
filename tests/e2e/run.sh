#!/usr/bin/env bash
# End-to-end test of casserole-operator on a throwaway kind cluster:
# install the CRD and operator, apply a cache (refused until its namespace grants the operator
# Secrets), check what it became, fetch through it, change,
# scale up and down, a DaemonSet cache (scale refused, a new image announced and rolled by
# surge), have the API server refuse changes a cluster cannot carry out (etcd
# replicas, a shrinking volume, a chunk size the node refuses), delete and re-create the peer
# token, break and fix its spec, the day-2 steps (grow the disk, rotate the peer token in three
# patches, add an admin token, replace an etcd member whose volume is gone, upgrade the
# operator), fail the leader over, delete it (foreground) and check garbage collection.
#
# Needs: docker, kind (>= 0.24, for NetworkPolicy support in kindnet), kubectl.
# Usage:  tests/e2e/run.sh            (KEEP_CLUSTER=1 keeps the cluster afterwards;
#                                       CLUSTER=name reuses or names the kind cluster)
# It cannot run in CI (no container runtime there): run it by hand before a release.
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER=${CLUSTER:-casserole-e2e}
NS=casserole-e2e
OPS=casserole-system
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
NODE_IMAGE=ghcr.io/casserole-cache/casserole-node:$VERSION
OPERATOR_IMAGE=ghcr.io/casserole-cache/casserole-operator:$VERSION

step() { printf '\n== %s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; kubectl -n "$NS" get all,casserole,pvc,secret,netpol,pdb >&2 || true; exit 1; }
# until_ok TIMEOUT_SECONDS DESCRIPTION COMMAND...: retries COMMAND every 2 s.
until_ok() {
  local deadline=$(( $(date +%s) + $1 )) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "timed out: $what"
    sleep 2
  done
  echo "ok: $what"
}
jp() { kubectl -n "$NS" get "$1" -o "jsonpath=$2"; }
cleanup() { [ -n "${KEEP_CLUSTER:-}" ] || kind delete cluster --name "$CLUSTER"; }

step "cluster and images"
kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 120s
trap cleanup EXIT
docker build --target node -t "$NODE_IMAGE" .
docker build --target operator -t "$OPERATOR_IMAGE" .
kind load docker-image --name "$CLUSTER" "$NODE_IMAGE" "$OPERATOR_IMAGE"

step "install the CRD and the operator (two replicas, one leader)"
kubectl apply --server-side -f crds/casserolecaches.casserole.io.yaml
kubectl wait --for=condition=Established crd/casserolecaches.casserole.io --timeout=60s
kubectl apply -f operator/deploy/operator.yaml
# Secrets are granted per namespace: watch the operator's own in the test namespace as well.
kubectl -n "$OPS" set env deploy/casserole-operator "SECRET_NAMESPACES=$OPS,$NS"
kubectl -n "$OPS" rollout status deploy/casserole-operator --timeout=180s
until_ok 60 "a leader holds the lease" \
  sh -c "kubectl -n $OPS get lease casserole-operator -o jsonpath='{.spec.holderIdentity}' | grep -q casserole-operator"
LEADER=$(kubectl -n "$OPS" get lease casserole-operator -o jsonpath='{.spec.holderIdentity}')

step "apply a cache where the operator has no Secrets: it says how to grant them, then runs"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl auth can-i get secrets -n kube-system --as="system:serviceaccount:$OPS:casserole-operator" \
  && fail "the operator can read kube-system's Secrets"
kubectl apply -f tests/e2e/cache.yaml
until_ok 120 "Degraded reason SecretAccessDenied" \
  sh -c "kubectl -n $NS get casserole e2e -o jsonpath='{.status.conditions[?(@.type==\"Degraded\")].reason}' | grep -qx SecretAccessDenied"
jp casserole/e2e '{.status.conditions[?(@.type=="Degraded")].message}' \
  | grep -q "create rolebinding casserole-operator-secrets" || fail "no remedy in the message"
kubectl -n "$NS" get events --field-selector reason=SecretAccessDenied -o name | grep -q . \
  || fail "no SecretAccessDenied event"
kubectl -n "$NS" get statefulset e2e >/dev/null 2>&1 && fail "applied without the peer token"
kubectl -n "$NS" create rolebinding casserole-operator-secrets \
  --clusterrole=casserole-operator-secrets --serviceaccount="$OPS:casserole-operator"
kubectl -n "$NS" wait casserole/e2e --for=condition=Ready --timeout=300s
for obj in statefulset/e2e statefulset/e2e-etcd service/e2e service/e2e-peer service/e2e-etcd \
           service/e2e-etcd-peer pdb/e2e pdb/e2e-etcd networkpolicy/e2e secret/e2e-peer-token; do
  kubectl -n "$NS" get "$obj" >/dev/null || fail "missing $obj"
  [ "$(jp "$obj" '{.metadata.ownerReferences[0].name}')" = e2e ] \
    || fail "$obj is not owned by the cache"
done
[ "$(jp casserole/e2e '{.status.readyReplicas}')" = 2 ] || fail "status.readyReplicas != 2"
kubectl get casserole -n "$NS"   # printer columns: Ready (condition), Upstream, Replicas, Pods Ready, Age
[ "$(jp casserole/e2e "{.status.members[*]}")" = "e2e-0 e2e-1" ] || fail "status.members"
[ "$(jp casserole/e2e "{.status.conditions[?(@.type==\"MembersReady\")].status}")" = True ] || fail "MembersReady"

step "fetch through the cache (twice: the second is a hit)"
fetch() {
  kubectl -n "$NS" run "curl-$1" --rm -i --restart=Never --image=curlimages/curl:8.10.1 -- \
    curl -sSf -o /dev/null -w '%{size_download}\n' http://e2e.$NS.svc/big.bin
}
[ "$(fetch 1 | head -1)" = 25165824 ] || fail "first fetch"
[ "$(fetch 2 | head -1)" = 25165824 ] || fail "second fetch"

step "a spec change rolls the pods; the peer token stays"
TOKEN=$(jp secret/e2e-peer-token '{.data.token}')
HASH=$(jp statefulset/e2e '{.spec.template.metadata.annotations.casserole\.io/config-hash}')
kubectl -n "$NS" patch casserole e2e --type=merge -p '{"spec":{"minTtlSeconds":120}}'
until_ok 60 "config hash changed" \
  sh -c "[ \"\$(kubectl -n $NS get sts e2e -o jsonpath='{.spec.template.metadata.annotations.casserole\.io/config-hash}')\" != '$HASH' ]"
kubectl -n "$NS" rollout status statefulset/e2e --timeout=300s
[ "$(jp secret/e2e-peer-token '{.data.token}')" = "$TOKEN" ] || fail "peer token rotated"
jp statefulset/e2e '{.spec.template.spec.containers[0].args}' | grep -q -- '--min-ttl=120s' || fail "flag not updated"

step "scale through the scale subresource: only replicas change"
HASH=$(jp statefulset/e2e '{.spec.template.metadata.annotations.casserole\.io/config-hash}')
kubectl -n "$NS" scale casserole/e2e --replicas=3
until_ok 300 "3 ready cache pods" sh -c "[ \"\$(kubectl -n $NS get casserole e2e -o jsonpath='{.status.readyReplicas}')\" = 3 ]"
[ "$(jp statefulset/e2e '{.spec.template.metadata.annotations.casserole\.io/config-hash}')" = "$HASH" ] \
  || fail "scaling rolled the pods"

step "scale back down: only replicas change"
kubectl -n "$NS" scale casserole/e2e --replicas=2
until_ok 300 "2 cache pods" sh -c "[ \"\$(kubectl -n $NS get sts e2e -o jsonpath='{.status.replicas}')\" = 2 ]"
[ "$(jp statefulset/e2e '{.spec.template.metadata.annotations.casserole\.io/config-hash}')" = "$HASH" ] \
  || fail "scaling down rolled the pods"

step "a DaemonSet cache: kubectl scale refused, a new image announced and rolled by surge"
kubectl apply -f - <<EOF
apiVersion: casserole.io/v1alpha1
kind: CasseroleCache
metadata: {name: e2e-ds, namespace: $NS}
spec:
  upstream: http://origin.$NS.svc.cluster.local
  workload: DaemonSet
  memory: {maxUsage: 64Mi}
  disk: {enabled: false}
  etcd: {managed: {replicas: 1, storage: 256Mi}}
EOF
kubectl -n "$NS" wait casserole/e2e-ds --for=condition=Ready --timeout=300s
[ "$(jp daemonset/e2e-ds '{.spec.updateStrategy.rollingUpdate.maxSurge} {.spec.updateStrategy.rollingUpdate.maxUnavailable}')" = "1 0" ] \
  || fail "DaemonSet does not roll by surge"
out=$(kubectl -n "$NS" scale casserole/e2e-ds --replicas=5 2>&1) && fail "scaling a DaemonSet cache was accepted"
echo "$out" | grep -q "no effect on a DaemonSet cache" || fail "no clear message: $out"
NEXT_IMAGE=${NODE_IMAGE%:*}:e2e-next
docker tag "$NODE_IMAGE" "$NEXT_IMAGE"
kind load docker-image --name "$CLUSTER" "$NEXT_IMAGE"
kubectl -n "$NS" patch casserole e2e-ds --type=merge -p "{\"spec\":{\"image\":\"$NEXT_IMAGE\"}}"
until_ok 60 "a NodeImageChanged event naming both images" sh -c \
  "kubectl -n $NS get events --field-selector reason=NodeImageChanged -o jsonpath='{.items[*].note}' | grep -q 'to $NEXT_IMAGE (spec.image)'"
deadline=$(( $(date +%s) + 300 ))
until kubectl -n "$NS" rollout status daemonset/e2e-ds --timeout=2s >/dev/null 2>&1; do
  [ "$(jp daemonset/e2e-ds '{.status.numberUnavailable}')" -gt 0 ] 2>/dev/null \
    && fail "a node had no ready cache pod during the roll"
  [ "$(date +%s)" -lt "$deadline" ] || fail "timed out: the DaemonSet roll"
done
[ "$(jp daemonset/e2e-ds '{.spec.template.spec.containers[0].image}')" = "$NEXT_IMAGE" ] || fail "image not rolled"
kubectl -n "$NS" delete casserole e2e-ds --wait=true

step "changes a cluster cannot carry out are refused by the API server, with a message"
out=$(kubectl -n "$NS" patch casserole e2e --type=merge -p '{"spec":{"etcd":{"managed":{"replicas":3}}}}' 2>&1) \
  && fail "etcd replica change accepted"
echo "$out" | grep -q "etcd.managed.replicas cannot change" || fail "no clear message: $out"
out=$(kubectl -n "$NS" patch casserole e2e --type=merge -p '{"spec":{"disk":{"size":"512Mi"}}}' 2>&1) \
  && fail "disk.size shrink accepted"
echo "$out" | grep -q "disk.size cannot shrink" || fail "no clear message: $out"
out=$(kubectl -n "$NS" patch casserole e2e --type=merge -p '{"spec":{"chunkSize":"128Mi"}}' 2>&1) \
  && fail "a chunk size the node refuses was accepted"
echo "$out" | grep -q "between 64Ki and 64Mi" || fail "no clear message: $out"
[ "$(jp statefulset/e2e-etcd '{.spec.replicas}')" = 1 ] || fail "etcd was resized"

step "a deleted peer token is made again and the pods roll onto it"
HASH=$(jp statefulset/e2e '{.spec.template.metadata.annotations.casserole\.io/config-hash}')
kubectl -n "$NS" delete secret e2e-peer-token
until_ok 60 "a new peer token" sh -c "kubectl -n $NS get secret e2e-peer-token -o jsonpath='{.data.token}' | grep -q ."
[ "$(jp secret/e2e-peer-token '{.data.token}')" != "$TOKEN" ] || fail "same token"
until_ok 60 "the pods roll" \
  sh -c "[ \"\$(kubectl -n $NS get sts e2e -o jsonpath='{.spec.template.metadata.annotations.casserole\.io/config-hash}')\" != '$HASH' ]"
kubectl -n "$NS" rollout status statefulset/e2e --timeout=300s
kubectl -n "$NS" wait casserole/e2e --for=condition=Ready --timeout=180s

step "an invalid spec sets Ready=False/InvalidSpec, emits a Warning and changes nothing"
GEN=$(jp statefulset/e2e '{.metadata.generation}')
kubectl -n "$NS" patch casserole e2e --type=merge -p '{"spec":{"passThrough":["(unclosed"]}}'
until_ok 60 "Ready=False reason InvalidSpec" \
  sh -c "kubectl -n $NS get casserole e2e -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].reason}' | grep -qx InvalidSpec"
kubectl -n "$NS" get events --field-selector reason=InvalidSpec -o name | grep -q . || fail "no InvalidSpec event"
[ "$(jp statefulset/e2e '{.metadata.generation}')" = "$GEN" ] || fail "the workload changed"
kubectl -n "$NS" patch casserole e2e --type=json -p '[{"op":"remove","path":"/spec/passThrough"}]'
kubectl -n "$NS" wait casserole/e2e --for=condition=Ready --timeout=120s

step "resize: growing the disk is carried out where the class allows it, refused clearly where not"
CLASS=$(kubectl get storageclass -o jsonpath='{.items[?(@.metadata.annotations.storageclass\.kubernetes\.io/is-default-class=="true")].metadata.name}')
EXPANDS=$(kubectl get storageclass "$CLASS" -o jsonpath='{.allowVolumeExpansion}')
kubectl -n "$NS" patch casserole e2e --type=merge -p '{"spec":{"disk":{"size":"2Gi"}}}'
if [ "$EXPANDS" = true ]; then
  until_ok 180 "claims grown to 2Gi" \
    sh -c "kubectl -n $NS get pvc cache-e2e-0 -o jsonpath='{.spec.resources.requests.storage}' | grep -qx 2Gi"
  [ "$(jp statefulset/e2e '{.spec.volumeClaimTemplates[0].spec.resources.requests.storage}')" = 2Gi ] \
    || fail "StatefulSet not re-created with the new template"
  kubectl -n "$NS" wait casserole/e2e --for=condition=Ready --timeout=180s
else
  until_ok 60 "Ready=False InvalidSpec naming the class" \
    sh -c "kubectl -n $NS get casserole e2e -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].message}' | grep -q 'does not allow volume expansion'"
  kubectl -n "$NS" patch casserole e2e --type=merge -p '{"spec":{"disk":{"size":"1Gi"}}}'
  kubectl -n "$NS" wait casserole/e2e --for=condition=Ready --timeout=120s
fi

step "rotate the peer token without a split: accept both, then switch (docs/operator-runbook.md)"
# A Secret made by an older release is immutable: delete it once (one roll) to get a mutable one.
if [ "$(jp secret/e2e-peer-token '{.immutable}')" = true ]; then
  kubectl -n "$NS" delete secret e2e-peer-token
  until_ok 60 "a mutable peer token" sh -c "kubectl -n $NS get secret e2e-peer-token -o jsonpath='{.data.token}' | grep -q ."
  kubectl -n "$NS" rollout status statefulset/e2e --timeout=300s
fi
OLD=$(jp secret/e2e-peer-token '{.data.token}' | base64 -d)
NEW=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
roll() {  # roll WHAT: wait for the pods to pick up a Secret change
  until_ok 60 "$1" sh -c "[ \"\$(kubectl -n $NS get sts e2e -o jsonpath='{.spec.template.metadata.annotations.casserole\.io/peer-token}')\" != '$FP' ]"
  FP=$(jp statefulset/e2e '{.spec.template.metadata.annotations.casserole\.io/peer-token}')
  kubectl -n "$NS" rollout status statefulset/e2e --timeout=300s
  kubectl -n "$NS" wait casserole/e2e --for=condition=Ready --timeout=180s
}
FP=$(jp statefulset/e2e '{.spec.template.metadata.annotations.casserole\.io/peer-token}')
kubectl -n "$NS" patch secret e2e-peer-token -p "{\"stringData\":{\"previous\":\"$NEW\"}}"
roll "phase 1: send the old token, accept both"
jp statefulset/e2e '{.spec.template.spec.containers[0].args}' | grep -q -- --peer-token-previous-file || fail "no previous token flag"
kubectl -n "$NS" patch secret e2e-peer-token -p "{\"stringData\":{\"token\":\"$NEW\",\"previous\":\"$OLD\"}}"
roll "phase 2: send the new token, accept both"
kubectl -n "$NS" patch secret e2e-peer-token --type=json -p '[{"op":"remove","path":"/data/previous"}]'
roll "phase 3: the new token only"
[ "$(fetch 3 | head -1)" = 25165824 ] || fail "fetch after the rotation"

step "add an admin token: the purge API answers"
kubectl -n "$NS" create secret generic e2e-admin --from-literal=token=e2e-admin-token-0123456789
kubectl -n "$NS" patch casserole e2e --type=merge -p '{"spec":{"adminToken":{"name":"e2e-admin"}}}'
until_ok 60 "the pods get --admin-token-file" \
  sh -c "kubectl -n $NS get sts e2e -o jsonpath='{.spec.template.spec.containers[0].args}' | grep -q -- --admin-token-file"
kubectl -n "$NS" rollout status statefulset/e2e --timeout=300s
kubectl -n "$NS" patch casserole e2e --type=merge -p '{"spec":{"adminToken":{"name":"missing"}}}'
until_ok 60 "a missing admin Secret is InvalidSpec" \
  sh -c "kubectl -n $NS get casserole e2e -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].message}' | grep -q 'spec.adminToken'"
kubectl -n "$NS" patch casserole e2e --type=merge -p '{"spec":{"adminToken":{"name":"e2e-admin"}}}'
kubectl -n "$NS" wait casserole/e2e --for=condition=Ready --timeout=120s

# This cache runs one etcd member, which re-bootstraps on its own; the 3-member replacement
# (remove, re-add, restart as `existing`) runs against real etcd in
# operator/tests/etcd_member_replacement.rs.
step "an etcd member whose volume is gone comes back (single member: a new, empty cluster)"
kubectl -n "$NS" scale casserole/e2e --replicas=2
kubectl -n "$NS" delete pvc data-e2e-etcd-0 --wait=false
kubectl -n "$NS" delete pod e2e-etcd-0
until_ok 300 "EtcdReady again" \
  sh -c "kubectl -n $NS get casserole e2e -o jsonpath='{.status.conditions[?(@.type==\"EtcdReady\")].status}' | grep -qx True"

step "upgrade the operator: caches keep their pods, the CRD is current"
HASH=$(jp statefulset/e2e '{.spec.template.metadata.annotations.casserole\.io/config-hash}')
kubectl -n "$OPS" rollout restart deploy/casserole-operator
kubectl -n "$OPS" rollout status deploy/casserole-operator --timeout=180s
sleep 20
[ "$(jp statefulset/e2e '{.spec.template.metadata.annotations.casserole\.io/config-hash}')" = "$HASH" ] \
  || fail "an operator restart rolled the cache pods"
[ "$(jp casserole/e2e "{.status.conditions[?(@.type==\"CRDCurrent\")].status}")" = True ] || fail "CRDCurrent"
# Same release: the default node image did not change, so no roll was announced.
[ -z "$(kubectl -n "$NS" get events --field-selector reason=NodeImageChanged,involvedObject.name=e2e -o name)" ] \
  || fail "a NodeImageChanged event without an image change"
LEADER=$(kubectl -n "$OPS" get lease casserole-operator -o jsonpath='{.spec.holderIdentity}')

step "leader failover"
kubectl -n "$OPS" delete pod "$LEADER" --wait=false
until_ok 60 "another replica leads" \
  sh -c "h=\$(kubectl -n $OPS get lease casserole-operator -o jsonpath='{.spec.holderIdentity}'); [ -n \"\$h\" ] && [ \"\$h\" != '$LEADER' ]"
kubectl -n "$NS" patch casserole e2e --type=merge -p '{"spec":{"minTtlSeconds":90}}'
until_ok 60 "the new leader reconciles" \
  sh -c "kubectl -n $NS get sts e2e -o jsonpath='{.spec.template.spec.containers[0].args}' | grep -q -- --min-ttl=90s"

step "delete (foreground): nothing is re-created while the children go, volumes included"
TOKEN_UID=$(jp secret/e2e-peer-token '{.metadata.uid}')
kubectl -n "$NS" delete casserole e2e --cascade=foreground --wait=true
uid=$(kubectl -n "$NS" get secret e2e-peer-token -o jsonpath='{.metadata.uid}' 2>/dev/null || true)
[ -z "$uid" ] || [ "$uid" = "$TOKEN_UID" ] || fail "a new peer token was created during deletion"
until_ok 180 "owned objects gone" \
  sh -c "[ -z \"\$(kubectl -n $NS get sts,svc,pdb,netpol,secret,pvc -l app.kubernetes.io/instance=e2e -o name)\" ]"

echo
echo "e2e: all checks passed"
