//! The reconciler: desired objects → server-side apply → status.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{field, info, instrument, warn, Span};

use crate::crd::{CasseroleCache, CasseroleCacheStatus};
use crate::metrics::Metrics;
use crate::resources::{self, cache, etcd, secret, IpFamily, Object, FIELD_MANAGER};
use crate::status::{self, Rollout};

/// Requeue interval once everything is ready (a safety net: watches trigger the real work).
pub const REQUEUE_READY: Duration = Duration::from_secs(300);
/// Requeue interval while pods are still coming up, to refresh the status.
pub const REQUEUE_PENDING: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("decoding {kind} {name}: {source}")]
    Decode {
        kind: String,
        name: String,
        source: kube::core::dynamic::ParseDynamicObjectError,
    },
}

impl Error {
    /// Low-cardinality label for the error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "client",
            Error::Decode { .. } => "decode",
        }
    }
}

/// Everything a reconcile needs, shared by all of them.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    /// Consecutive failures per cache (`namespace/name`), for the error policy's backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// IP family of the cluster's pod addresses.
    pub ip_family: IpFamily,
}

impl Context {
    pub fn new(client: Client, metrics: Metrics, instance: Option<String>) -> Context {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance,
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            failures: Mutex::new(HashMap::new()),
            ip_family: IpFamily::default(),
        }
    }

    pub fn with_ip_family(mut self, ip_family: IpFamily) -> Context {
        self.ip_family = ip_family;
        self
    }

    fn record_failure(&self, key: String) -> u32 {
        let mut failures = self.failures.lock().expect("not poisoned");
        let n = failures.entry(key).or_insert(0);
        *n += 1;
        *n
    }

    fn clear_failures(&self, key: &str) {
        self.failures.lock().expect("not poisoned").remove(key);
    }
}

fn key(cache: &CasseroleCache) -> String {
    format!("{}/{}", resources::namespace(cache), cache.name_any())
}

/// Exponential backoff after consecutive failures: 5 s, 10 s, 20 s, ... capped at 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(6);
    Duration::from_secs(5 << exp).min(Duration::from_secs(300))
}

/// What the error policy does: log, count, and retry with backoff.
pub fn error_policy(cache: Arc<CasseroleCache>, error: &Error, ctx: Arc<Context>) -> Action {
    let n = ctx.record_failure(key(&cache));
    warn!(cache = %key(&cache), failures = n, %error, "reconcile failed");
    ctx.metrics
        .failures
        .with_label_values(&[error.metric_label()])
        .inc();
    Action::requeue(backoff(n))
}

/// One reconcile of one cache.
#[instrument(skip(cache, ctx), fields(cache = %key(&cache), generation = field::Empty))]
pub async fn reconcile(cache: Arc<CasseroleCache>, ctx: Arc<Context>) -> Result<Action, Error> {
    let mut timer = ctx.metrics.start_reconcile();
    Span::current().record("generation", cache.metadata.generation.unwrap_or_default());
    let ns = resources::namespace(&cache);

    let objects = match resources::desired_for(&cache, ctx.ip_family) {
        Ok(objects) => objects,
        Err(invalid) => {
            // Touch nothing: a broken spec must not tear down a working cache.
            warn!(%invalid, "invalid spec");
            ctx.metrics.invalid_specs.inc();
            let reference = cache.object_ref(&());
            let event = Event {
                type_: EventType::Warning,
                reason: "InvalidSpec".into(),
                note: Some(invalid.to_string()),
                action: "Reconcile".into(),
                secondary: None,
            };
            // Status first: it is what users and tooling read, so an Event failure (e.g.
            // missing RBAC for events) must not hide it.
            let new = status::invalid(&cache, &invalid, Timestamp::now());
            patch_status(&ctx.client, &cache, new).await?;
            ctx.recorder.publish(&event, &reference).await?;
            ctx.clear_failures(&key(&cache));
            timer.set_result("invalid");
            return Ok(Action::await_change());
        }
    };

    ensure_peer_token(&ctx.client, &cache).await?;

    let mut cache_rollout = Rollout::default();
    let mut etcd_rollout = None;
    for object in &objects {
        let applied = apply(&ctx.client, &ns, object).await?;
        let decode = |source| Error::Decode {
            kind: object.kind(),
            name: object.name().into(),
            source,
        };
        match object {
            Object::StatefulSet(_) if object.name() == etcd::name(&cache) => {
                let sts: StatefulSet = applied.try_parse().map_err(decode)?;
                etcd_rollout = Some(Rollout::from_statefulset(&sts));
            }
            Object::StatefulSet(_) if object.name() == cache::workload_name(&cache) => {
                let sts: StatefulSet = applied.try_parse().map_err(decode)?;
                cache_rollout = Rollout::from_statefulset(&sts);
            }
            Object::DaemonSet(_) => {
                let ds: DaemonSet = applied.try_parse().map_err(decode)?;
                cache_rollout = Rollout::from_daemonset(&ds);
            }
            _ => {}
        }
    }

    // Leftovers can only appear when the spec changed, so steady-state reconciles skip the
    // lookups.
    if cache.status.as_ref().and_then(|s| s.observed_generation) != cache.metadata.generation {
        prune(&ctx.client, &cache, &objects).await?;
    }

    let new = status::compute(&cache, cache_rollout, etcd_rollout, Timestamp::now());
    let ready = new
        .conditions
        .iter()
        .any(|c| c.type_ == status::READY && c.status == "True");
    if cache.status.as_ref() != Some(&new) {
        patch_status(&ctx.client, &cache, new).await?;
    }
    info!(objects = objects.len(), ready, "reconciled");
    ctx.clear_failures(&key(&cache));
    timer.set_result("ok");
    Ok(Action::requeue(if ready {
        REQUEUE_READY
    } else {
        REQUEUE_PENDING
    }))
}

/// Server-side apply of one object under the operator's field manager. `force` takes over
/// fields another manager set (e.g. a `kubectl edit`): the operator owns these objects.
async fn apply(client: &Client, ns: &str, object: &Object) -> Result<DynamicObject, Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &object.api_resource());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    Ok(api
        .patch(object.name(), &params, &Patch::Apply(object.to_value()))
        .await?)
}

/// Deletes objects an earlier spec needed and this one does not (e.g. the StatefulSet after a
/// switch to DaemonSet, or the managed etcd after a switch to an external one), but only
/// those this cache controls: a same-named object of someone else's is left alone.
async fn prune(client: &Client, cache: &CasseroleCache, desired: &[Object]) -> Result<(), Error> {
    let uid = cache.metadata.uid.as_deref();
    for (ar, name) in resources::leftovers(cache, desired) {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &resources::namespace(cache), &ar);
        let existing = match api.get_opt(&name).await {
            Ok(Some(existing)) => existing,
            Ok(None) => continue,
            // Pruning is housekeeping: RBAC without get/delete on owned kinds (an older install)
            // must not block reconciling. The leftovers still go with the cache.
            Err(kube::Error::Api(e)) if e.code == 403 => {
                warn!(kind = %ar.kind, %name, "not allowed to look for leftovers; skipping pruning");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let ours = existing
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid);
        if ours {
            info!(kind = %ar.kind, %name, "pruning an object the spec no longer needs");
            match api.delete(&name, &Default::default()).await {
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
                Ok(_) => {}
            }
        }
    }
    Ok(())
}

/// Creates the peer token Secret if it does not exist yet; an existing one (ours, or one the
/// user provided under the same name) is never touched, so the token is never rotated by a
/// reconcile.
async fn ensure_peer_token(client: &Client, cache: &CasseroleCache) -> Result<(), Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &resources::namespace(cache));
    let name = secret::peer_token_secret_name(cache);
    if api.get_opt(&name).await?.is_some() {
        return Ok(());
    }
    let secret = secret::peer_token_secret(cache, &secret::generate_token());
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            info!(secret = %name, "created peer token");
            Ok(())
        }
        // Lost a race with another writer: theirs is as good as ours.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Writes the status subresource by server-side apply.
async fn patch_status(
    client: &Client,
    cache: &CasseroleCache,
    status: CasseroleCacheStatus,
) -> Result<(), Error> {
    let api: Api<CasseroleCache> = Api::namespaced(client.clone(), &resources::namespace(cache));
    let patch = json!({
        "apiVersion": CasseroleCache::api_version(&()),
        "kind": CasseroleCache::kind(&()),
        "status": status,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(&cache.name_any(), &params, &Patch::Apply(patch))
        .await?;
    Ok(())
}
