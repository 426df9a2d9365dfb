//! What the CRD's transition rules guard, checked by the operator itself against the live
//! StatefulSets (an older CRD, one applied by hand, or `applyOnStart: false` may lack the
//! rules), and the volume changes it carries out: growing claims where the storage class
//! allows it and re-creating a StatefulSet whose claim templates changed, its pods orphaned
//! (kept running) and adopted by the new one.

use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PersistentVolumeClaimSpec};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tracing::info;

use crate::crd::{CasseroleCache, WorkloadKind};
use crate::resources::{self, cache, etcd, InvalidSpec, Object, FIELD_MANAGER};

/// The workloads a cache has now (`None`: none of that name).
#[derive(Clone, Debug, Default)]
pub struct Live {
    pub etcd: Option<StatefulSet>,
    pub cache: Option<StatefulSet>,
    /// The cache DaemonSet, in DaemonSet mode: what its pods run before this reconcile
    /// changes it (a roll of every node is announced, see `rollout_news`).
    pub daemonset: Option<DaemonSet>,
}

/// Reads the StatefulSets the spec's transition rules are about, and the cache DaemonSet. One
/// being deleted (a re-creation with orphaned pods in progress) counts as absent: the apply
/// that follows goes to it harmlessly, and its deletion triggers the reconcile that creates it
/// anew.
pub async fn fetch(client: &Client, cache: &CasseroleCache) -> Result<Live, kube::Error> {
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), &resources::namespace(cache));
    let present =
        |sts: Option<StatefulSet>| sts.filter(|s| s.metadata.deletion_timestamp.is_none());
    let mut live = Live::default();
    if cache.spec.etcd.managed.is_some() {
        live.etcd = present(api.get_opt(&etcd::name(cache)).await?);
    }
    match cache.spec.workload {
        WorkloadKind::StatefulSet => {
            live.cache = present(api.get_opt(&cache::workload_name(cache)).await?);
        }
        WorkloadKind::DaemonSet => {
            let api: Api<DaemonSet> = Api::namespaced(client.clone(), &resources::namespace(cache));
            live.daemonset = match api.get_opt(&cache::workload_name(cache)).await {
                Ok(daemonset) => daemonset,
                // Read only to announce a roll: an older install's RBAC without `get` on
                // DaemonSets must not block reconciling.
                Err(kube::Error::Api(e)) if e.code == 403 => None,
                Err(e) => return Err(e),
            };
        }
    }
    Ok(live)
}

/// Whether the managed etcd has formed its cluster: its live StatefulSet already says
/// `existing`, or a member is ready (its readiness needs a quorum, so the members agreed on
/// one cluster).
pub fn etcd_bootstrapped(live: &Live) -> bool {
    let Some(sts) = &live.etcd else { return false };
    let says_existing = sts
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|p| p.containers.first())
        .and_then(|c| c.args.as_ref())
        .is_some_and(|a| a.iter().any(|a| a == "--initial-cluster-state=existing"));
    let quorum_seen = sts
        .status
        .as_ref()
        .is_some_and(|s| s.ready_replicas.unwrap_or(0) > 0);
    says_existing || quorum_seen
}

/// A StatefulSet whose claim templates must change: its claims grow to `grow` (template name,
/// new size, storage class) first, then it is deleted with its pods orphaned and applied anew.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recreate {
    pub statefulset: String,
    pub grow: Vec<(String, String, Option<String>)>,
}

fn invalid(field: &str, message: String) -> InvalidSpec {
    InvalidSpec {
        field: field.into(),
        message,
    }
}

fn bytes(claim: &PersistentVolumeClaimSpec) -> Option<u64> {
    let q = claim
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")?;
    casserole_limits::parse_size(&q.0).ok()
}

/// Compares one desired StatefulSet with the live one: what the transition rules refuse is an
/// `InvalidSpec` naming `field`; changed claim templates are a [`Recreate`].
fn compare(
    desired: &StatefulSet,
    live: &StatefulSet,
    (prefix, size_key): (&str, &str),
) -> Result<Option<Recreate>, InvalidSpec> {
    let field = |key: &str| format!("{prefix}.{key}");
    let none = Vec::new();
    let want = desired.spec.volume_claim_templates.as_ref();
    let have = live.spec.volume_claim_templates.as_ref();
    let (want, have) = (want.unwrap_or(&none), have.unwrap_or(&none));
    if want.len() != have.len() {
        return Err(invalid(
            &field("enabled"),
            "the disk tier cannot be turned on or off on a running StatefulSet (its claims would be lost): delete and recreate the cache, or switch workload".into(),
        ));
    }
    let mut recreate = Recreate {
        statefulset: desired.name_any(),
        grow: Vec::new(),
    };
    let mut changed = false;
    for (w, h) in want.iter().zip(have) {
        let (ws, hs) = (
            w.spec.clone().unwrap_or_default(),
            h.spec.clone().unwrap_or_default(),
        );
        if ws.storage_class_name != hs.storage_class_name {
            return Err(invalid(
                &field("storageClassName"),
                format!(
                    "cannot change from {:?} to {:?} (a claim's class is immutable)",
                    hs.storage_class_name, ws.storage_class_name
                ),
            ));
        }
        match (bytes(&ws), bytes(&hs)) {
            (Some(new), Some(old)) if new < old => {
                return Err(invalid(
                    &field(size_key),
                    format!("cannot shrink from {old} to {new} bytes (a volume can only grow)"),
                ))
            }
            (Some(new), Some(old)) if new > old => {
                let size = ws.resources.as_ref().and_then(|r| r.requests.as_ref());
                let size = size.and_then(|r| r.get("storage")).map(|q| q.0.clone());
                recreate.grow.push((
                    w.name_any(),
                    size.unwrap_or_default(),
                    ws.storage_class_name.clone(),
                ));
                changed = true;
            }
            _ => {}
        }
        changed |= w.metadata.labels != h.metadata.labels;
    }
    Ok(changed.then_some(recreate))
}

/// Checks the desired objects against the live StatefulSets.
pub fn check(
    cache: &CasseroleCache,
    desired: &[Object],
    live: &Live,
) -> Result<Vec<Recreate>, InvalidSpec> {
    let mut out = Vec::new();
    for object in desired {
        let Object::StatefulSet(want) = object else {
            continue;
        };
        let (live, field) = if want.name_any() == etcd::name(cache) {
            (&live.etcd, ("spec.etcd.managed", "storage"))
        } else {
            (&live.cache, ("spec.disk", "size"))
        };
        let Some(live) = live else { continue };
        if want.name_any() == etcd::name(cache) {
            let (w, h) = (replicas(want), replicas(live));
            if w != h {
                return Err(invalid(
                    "spec.etcd.managed.replicas",
                    format!("cannot change from {h} to {w} after creation (new members would bootstrap a second cluster): create a new cache instead"),
                ));
            }
        }
        out.extend(compare(want, live, field)?);
    }
    Ok(out)
}

fn replicas(sts: &StatefulSet) -> i32 {
    sts.spec.replicas.unwrap_or(1)
}

/// Whether claims of this class (the cluster's default class when `None`) can grow.
async fn expandable(client: &Client, class: Option<&str>) -> Result<Option<String>, kube::Error> {
    let api: Api<StorageClass> = Api::all(client.clone());
    let found = match class {
        Some(name) => api.get_opt(name).await?,
        None => api
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .find(|c| {
                c.annotations()
                    .get("storageclass.kubernetes.io/is-default-class")
                    .is_some_and(|v| v == "true")
            }),
    };
    Ok(match found {
        Some(c) if c.allow_volume_expansion == Some(true) => None,
        Some(c) => Some(format!(
            "storage class {} does not allow volume expansion",
            c.name_any()
        )),
        None => Some(format!(
            "storage class {} not found",
            class.unwrap_or("(default)")
        )),
    })
}

/// Checks every growing claim's class first (nothing is touched when one cannot grow), then
/// patches the claims, then deletes each StatefulSet with its pods orphaned; the apply that
/// follows creates it anew with the new templates and adopts the pods.
pub async fn carry_out(
    client: &Client,
    cache: &CasseroleCache,
    recreates: &[Recreate],
) -> Result<Result<(), InvalidSpec>, kube::Error> {
    for r in recreates {
        for (_, _, class) in &r.grow {
            if let Some(why) = expandable(client, class.as_deref()).await? {
                let field = if r.statefulset == etcd::name(cache) {
                    "spec.etcd.managed.storage"
                } else {
                    "spec.disk.size"
                };
                return Ok(Err(invalid(
                    field,
                    format!("cannot grow the volumes: {why}"),
                )));
            }
        }
    }
    let ns = resources::namespace(cache);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    for r in recreates {
        for (template, size, _) in &r.grow {
            let prefix = format!("{template}-{}-", r.statefulset);
            let instance = format!("app.kubernetes.io/instance={}", cache.name_any());
            for pvc in pvcs
                .list(&ListParams::default().labels(&instance))
                .await?
                .items
            {
                let name = pvc.name_any();
                let ordinal = name
                    .strip_prefix(&prefix)
                    .is_some_and(|n| n.parse::<u32>().is_ok());
                if !ordinal {
                    continue;
                }
                info!(claim = %name, %size, "growing a volume claim");
                let patch = json!({"spec": {"resources": {"requests": {"storage": size}}}});
                let params = PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..PatchParams::default()
                };
                pvcs.patch(&name, &params, &Patch::Merge(patch)).await?;
            }
        }
        info!(statefulset = %r.statefulset, "re-creating with new claim templates, pods kept");
        match sts.delete(&r.statefulset, &DeleteParams::orphan()).await {
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            other => drop(other?),
        }
    }
    Ok(Ok(()))
}

#[cfg(test)]
#[path = "live_tests.rs"]
mod tests;
