//! The reconciler: desired objects → server-side apply → status.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{field, info, instrument, warn, Span};

use crate::crd::{CasseroleCache, CasseroleCacheStatus};
use crate::health::Liveness;
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
    #[error("{}", ApplyFailure::summary(.0))]
    Apply(Vec<ApplyFailure>),
}

/// One object the API server refused to apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyFailure {
    pub kind: String,
    pub name: String,
    /// The API server's message (or the transport error).
    pub message: String,
}

impl ApplyFailure {
    fn new(object: &Object, error: &kube::Error) -> ApplyFailure {
        let message = match error {
            kube::Error::Api(status) => status.message.clone(),
            other => other.to_string(),
        };
        ApplyFailure {
            kind: object.kind(),
            name: object.name().into(),
            message,
        }
    }

    /// "applying StatefulSet web: <message>; applying Service web: <message>".
    pub fn summary(failures: &[ApplyFailure]) -> String {
        failures
            .iter()
            .map(|f| format!("applying {} {}: {}", f.kind, f.name, f.message))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl Error {
    /// Low-cardinality label for the error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "client",
            Error::Decode { .. } => "decode",
            Error::Apply(_) => "apply",
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
    /// Running reconciles, for `/healthz`.
    pub liveness: Liveness,
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
            liveness: Liveness::default(),
        }
    }

    pub fn with_liveness(mut self, liveness: Liveness) -> Context {
        self.liveness = liveness;
        self
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
    let _running = ctx.liveness.start();
    Span::current().record("generation", cache.metadata.generation.unwrap_or_default());
    if cache.metadata.deletion_timestamp.is_some() {
        // Being deleted (foreground deletion waits for the children): applying now would
        // re-create what the garbage collector is removing, a new peer token included.
        info!("being deleted: nothing to reconcile");
        timer.set_result("deleting");
        return Ok(Action::await_change());
    }
    if let Err(invalid) = resources::validate::plan(&cache) {
        refuse(&ctx, &cache, &invalid).await?;
        timer.set_result("invalid");
        return Ok(Action::await_change());
    }

    let token = ensure_peer_token(&ctx, &cache).await?;
    let inputs = resources::Inputs {
        ip_family: ctx.ip_family,
        peer_token_fingerprint: Some(secret::token_fingerprint(&token)),
    };
    let objects = match resources::desired_for(&cache, &inputs) {
        Ok(objects) => objects,
        Err(invalid) => unreachable!("validated above: {invalid}"),
    };
    let (rollouts, failures) = apply_all(&ctx.client, &cache, &objects).await?;

    // Leftovers can only appear when the spec changed, so steady-state reconciles skip the
    // lookups.
    if cache.status.as_ref().and_then(|s| s.observed_generation) != cache.metadata.generation {
        prune(&ctx, &cache, &objects).await?;
    }

    if !failures.is_empty() {
        report_apply_failures(&ctx, &cache, &failures).await?;
        return Err(Error::Apply(failures));
    }
    let now = Timestamp::now();
    let mut new = status::compute(&cache, rollouts.cache, rollouts.etcd, now);
    status::set_members(&mut new, &cache, members(&ctx.client, &cache).await?, now);
    let ready = new
        .conditions
        .iter()
        .any(|c| c.type_ == status::READY && c.status == "True");
    let mut news = status::notable_changes(&cache, &new, rollouts.cache.desired);
    if cache.status.is_none() {
        let names: Vec<String> = objects
            .iter()
            .map(|o| format!("{} {}", o.kind(), o.name()))
            .collect();
        news.insert(0, ("Created", format!("created {}", names.join(", "))));
    }
    if cache.status.as_ref() != Some(&new) {
        patch_status(&ctx.client, &cache, new).await?;
    }
    for (reason, note) in news {
        publish(
            &ctx,
            &cache,
            event(EventType::Normal, reason, "Reconcile", note),
        )
        .await;
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

/// Names of the cache pods that are ready (their `/readyz` needs the etcd membership loaded),
/// sorted; `None` when listing pods is not allowed.
async fn members(client: &Client, cache: &CasseroleCache) -> Result<Option<Vec<String>>, Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &resources::namespace(cache));
    let params = ListParams::default().labels(&resources::selector_string(cache));
    let pods = match api.list(&params).await {
        Ok(pods) => pods,
        Err(kube::Error::Api(e)) if e.code == 403 => {
            warn!("not allowed to list pods; status.members stays unknown");
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let ready = |pod: &Pod| {
        pod.metadata.deletion_timestamp.is_none()
            && pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    let mut names: Vec<String> = pods
        .items
        .iter()
        .filter(|p| ready(p))
        .map(|p| p.name_any())
        .collect();
    names.sort();
    Ok(Some(names))
}

/// A spec the operator will not act on: status and a Warning Event say why; nothing else is
/// touched, so a broken spec never tears down a working cache.
async fn refuse(
    ctx: &Context,
    cache: &CasseroleCache,
    invalid: &resources::InvalidSpec,
) -> Result<(), Error> {
    warn!(%invalid, "invalid spec");
    ctx.metrics.invalid_specs.inc();
    // Status first: it is what users and tooling read, so an Event failure (e.g. missing RBAC
    // for events) must not hide it.
    let new = status::invalid(cache, invalid, Timestamp::now());
    patch_status(&ctx.client, cache, new).await?;
    ctx.recorder
        .publish(
            &event(
                EventType::Warning,
                "InvalidSpec",
                "Reconcile",
                invalid.to_string(),
            ),
            &cache.object_ref(&()),
        )
        .await?;
    ctx.clear_failures(&key(cache));
    Ok(())
}

fn event(type_: EventType, reason: &str, action: &str, note: String) -> Event {
    Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    }
}

/// Publishes an Event about the cache; a failure is logged, never fatal (Events are best
/// effort, the status carries the same facts).
async fn publish(ctx: &Context, cache: &CasseroleCache, event: Event) {
    if let Err(error) = ctx.recorder.publish(&event, &cache.object_ref(&())).await {
        warn!(%error, reason = %event.reason, "could not publish an event");
    }
}

/// What the applied workloads report.
#[derive(Default)]
struct Rollouts {
    cache: Rollout,
    etcd: Option<Rollout>,
}

/// Applies every object, going on past a refused one (an immutable field of one object must
/// not keep the others from being updated), and returns the rollouts and the refusals.
async fn apply_all(
    client: &Client,
    cache: &CasseroleCache,
    objects: &[Object],
) -> Result<(Rollouts, Vec<ApplyFailure>), Error> {
    let ns = resources::namespace(cache);
    let mut rollouts = Rollouts::default();
    let mut failures = Vec::new();
    for object in objects {
        let applied = match apply(client, &ns, object).await {
            Ok(applied) => applied,
            Err(Error::Kube(e)) => {
                warn!(kind = %object.kind(), name = object.name(), error = %e, "apply failed");
                failures.push(ApplyFailure::new(object, &e));
                continue;
            }
            Err(e) => return Err(e),
        };
        let decode = |source| Error::Decode {
            kind: object.kind(),
            name: object.name().into(),
            source,
        };
        match object {
            Object::StatefulSet(_) if object.name() == etcd::name(cache) => {
                let sts: StatefulSet = applied.try_parse().map_err(decode)?;
                rollouts.etcd = Some(Rollout::from_statefulset(&sts));
            }
            Object::StatefulSet(_) if object.name() == cache::workload_name(cache) => {
                let sts: StatefulSet = applied.try_parse().map_err(decode)?;
                rollouts.cache = Rollout::from_statefulset(&sts);
            }
            Object::DaemonSet(_) => {
                let ds: DaemonSet = applied.try_parse().map_err(decode)?;
                rollouts.cache = Rollout::from_daemonset(&ds);
            }
            _ => {}
        }
    }
    Ok((rollouts, failures))
}

/// `Degraded=True` (reason `ApplyFailed`) naming each refused object and the API's message, and
/// a Warning Event per object.
async fn report_apply_failures(
    ctx: &Context,
    cache: &CasseroleCache,
    failures: &[ApplyFailure],
) -> Result<(), Error> {
    let message = ApplyFailure::summary(failures);
    let new = status::apply_failed(cache, &message, Timestamp::now());
    if cache.status.as_ref() != Some(&new) {
        patch_status(&ctx.client, cache, new).await?;
    }
    for f in failures {
        let note = format!("{} {}: {}", f.kind, f.name, f.message);
        publish(
            ctx,
            cache,
            event(EventType::Warning, "ApplyFailed", "Apply", note),
        )
        .await;
    }
    Ok(())
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
async fn prune(ctx: &Context, cache: &CasseroleCache, desired: &[Object]) -> Result<(), Error> {
    let client = &ctx.client;
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
                Ok(_) => {
                    let note =
                        format!("deleted {} {name}, which the spec no longer needs", ar.kind);
                    publish(
                        ctx,
                        cache,
                        event(EventType::Normal, "Pruned", "Delete", note),
                    )
                    .await;
                }
            }
        }
    }
    Ok(())
}

/// Creates the peer token Secret if it does not exist yet, and returns the token. An existing
/// one (ours, or one the user provided under the same name) is never written, so a reconcile
/// never rotates the token; a deleted one is made again (and the pods roll onto it, through
/// the fingerprint annotation).
async fn ensure_peer_token(ctx: &Context, cache: &CasseroleCache) -> Result<Vec<u8>, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &resources::namespace(cache));
    let name = secret::peer_token_secret_name(cache);
    if let Some(existing) = api.get_opt(&name).await? {
        return Ok(token_of(&existing));
    }
    let token = secret::generate_token();
    let new = secret::peer_token_secret(cache, &token);
    match api.create(&PostParams::default(), &new).await {
        Ok(_) => {
            info!(secret = %name, "created peer token");
            let note = format!("created the peer token Secret {name}");
            publish(
                ctx,
                cache,
                event(EventType::Normal, "Created", "Create", note),
            )
            .await;
            Ok(token.into_bytes())
        }
        // Lost a race with another writer: theirs is as good as ours.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(token_of(&api.get(&name).await?)),
        Err(e) => Err(e.into()),
    }
}

fn token_of(secret: &Secret) -> Vec<u8> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(secret::TOKEN_KEY))
        .map(|b| b.0.clone())
        .unwrap_or_default()
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
