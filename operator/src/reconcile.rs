//! The reconciler: desired objects → server-side apply → status.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{field, info, instrument, warn, Span};

use crate::context::{event, publish};
pub use crate::context::{ApplyFailure, Context, Error};
use crate::crd::{CasseroleCache, CasseroleCacheStatus};
use crate::live;
use crate::resources::{self, cache, etcd, InvalidSpec, Object, FIELD_MANAGER};
use crate::status::{self, Rollout};

/// Requeue interval once everything is ready (a safety net: watches trigger the real work).
pub const REQUEUE_READY: Duration = Duration::from_secs(300);
/// Requeue interval while pods are still coming up, to refresh the status.
pub const REQUEUE_PENDING: Duration = Duration::from_secs(15);

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

/// One reconcile of one cache. A failure anywhere is also reported on the cache (`Degraded`
/// with reason `ReconcileFailed`, unless applying already said `ApplyFailed`), best effort.
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
    let result = reconcile_spec(&cache, &ctx, &mut timer).await;
    if let Err(error) = &result {
        if !matches!(error, Error::Apply(_)) {
            report_failure(&ctx, &cache, error).await;
        }
    }
    result
}

/// `Degraded=True` with the failure's reason and message, best effort; a Warning Event too
/// when the operator may not use Secrets in the cache's namespace (someone must grant them),
/// once, not on every retry.
async fn report_failure(ctx: &Context, cache: &CasseroleCache, error: &Error) {
    let reason = error.reason();
    let told = cache
        .condition(status::DEGRADED)
        .is_some_and(|c| c.status == "True" && c.reason == reason);
    let new = status::reconcile_failed(cache, reason, &error.to_string(), Timestamp::now());
    if let Err(e) = patch_status(&ctx.client, cache, new).await {
        warn!(error = %e, "could not report the failure on the cache");
    }
    if matches!(error, Error::SecretsForbidden { .. }) && !told {
        let note = error.to_string();
        publish(
            ctx,
            cache,
            event(EventType::Warning, reason, "Reconcile", note),
        )
        .await;
    }
}

/// What a reconcile does with a cache once everything the operator checks was looked at.
enum Prepared {
    /// Apply these objects, then announce `news` (a new node image, a scale that cannot
    /// apply: see `rollout_news`).
    Apply {
        objects: Vec<Object>,
        news: Vec<kube::runtime::events::Event>,
    },
    /// Refuse the spec: nothing is touched.
    Refuse(InvalidSpec),
    /// The pods run this newer operator release's default node image: leave the cache to it.
    Hold(String),
}

/// The desired objects once everything the operator checks passed, after carrying out the
/// volume changes the spec asks for; a refusal when it must not act.
async fn prepare(ctx: &Context, cache: &CasseroleCache) -> Result<Prepared, Error> {
    if let Err(invalid) = resources::validate::plan(cache) {
        return Ok(Prepared::Refuse(invalid));
    }
    let tokens = match crate::tokens::ensure(ctx, cache).await? {
        Ok(tokens) => tokens,
        Err(invalid) => return Ok(Prepared::Refuse(invalid)),
    };
    // What the CRD's transition rules refuse, refused here too (the live CRD may lack them).
    let live = live::fetch(&ctx.client, cache).await?;
    if let Some(image) = crate::rollout_news::newer_release_image(cache, &live) {
        return Ok(Prepared::Hold(image));
    }
    let inputs = resources::Inputs {
        ip_family: ctx.ip_family,
        peer_token_fingerprint: Some(tokens.peer_fingerprint),
        peer_token_previous: tokens.peer_previous,
        admin_token_fingerprint: tokens.admin_fingerprint,
        etcd_bootstrapped: live::etcd_bootstrapped(&live),
        operator_namespace: ctx.operator_namespace.clone(),
    };
    let objects = match resources::desired_for(cache, &inputs) {
        Ok(objects) => objects,
        Err(invalid) => unreachable!("validated above: {invalid}"),
    };
    let news = crate::rollout_news::news(cache, &live, &objects);
    let recreates = match live::check(cache, &objects, &live) {
        Ok(recreates) => recreates,
        Err(invalid) => return Ok(Prepared::Refuse(invalid)),
    };
    if !recreates.is_empty() {
        if let Err(invalid) = live::carry_out(&ctx.client, cache, &recreates).await? {
            return Ok(Prepared::Refuse(invalid));
        }
        announce_recreates(ctx, cache, &recreates).await;
    }
    Ok(Prepared::Apply { objects, news })
}

/// A Normal `VolumesChanged` Event per StatefulSet re-created with new claim templates.
async fn announce_recreates(ctx: &Context, cache: &CasseroleCache, recreates: &[live::Recreate]) {
    for r in recreates {
        let note = format!(
            "re-created StatefulSet {} with new volume claim templates (pods kept){}",
            r.statefulset,
            if r.grow.is_empty() {
                ""
            } else {
                "; its volume claims were grown"
            }
        );
        publish(
            ctx,
            cache,
            event(EventType::Normal, "VolumesChanged", "Resize", note),
        )
        .await;
    }
}

async fn reconcile_spec(
    cache: &CasseroleCache,
    ctx: &Context,
    timer: &mut crate::metrics::ReconcileTimer,
) -> Result<Action, Error> {
    let (objects, announced) = match prepare(ctx, cache).await? {
        Prepared::Apply { objects, news } => (objects, news),
        Prepared::Refuse(invalid) => {
            refuse(ctx, cache, &invalid).await?;
            timer.set_result("invalid");
            return Ok(Action::await_change());
        }
        Prepared::Hold(image) => {
            hold(ctx, cache, &image).await;
            timer.set_result("held");
            return Ok(Action::requeue(REQUEUE_READY));
        }
    };
    let (rollouts, failures) = apply_all(&ctx.client, cache, &objects).await?;
    if !failures.is_empty() {
        // Nothing is pruned while a desired object is refused: the StatefulSet a refused
        // DaemonSet would replace keeps serving (with its volumes).
        report_apply_failures(ctx, cache, &failures).await?;
        return Err(Error::Apply(failures));
    }
    if rollouts.etcd.is_some_and(|e| e.ready < e.desired) {
        crate::etcd_heal::heal(ctx, cache).await?;
    }
    // Leftovers can only appear when the spec changed, so steady-state reconciles skip the
    // lookups.
    if cache.status.as_ref().and_then(|s| s.observed_generation) != cache.metadata.generation {
        prune(ctx, cache, &objects).await?;
    }
    let ready = report(ctx, cache, &objects, &rollouts, announced).await?;
    info!(objects = objects.len(), ready, "reconciled");
    ctx.clear_failures(&key(cache));
    timer.set_result("ok");
    Ok(Action::requeue(if ready {
        REQUEUE_READY
    } else {
        REQUEUE_PENDING
    }))
}

/// Leaves a cache whose pods run a newer operator release's default node image alone (an
/// older replica leading for a moment during an operator upgrade must not roll them back),
/// and says so: after a deliberate downgrade the user pins `spec.image`.
async fn hold(ctx: &Context, cache: &CasseroleCache, image: &str) {
    info!(%image, "the pods run a newer operator release's default node image: leaving the cache to it");
    let note = format!(
        "the cache pods run {image}, the default node image of a newer operator release than this one ({}): not reconciled, so as not to roll them back; after a deliberate operator downgrade, set spec.image",
        env!("CARGO_PKG_VERSION")
    );
    publish(
        ctx,
        cache,
        event(EventType::Warning, "NewerRelease", "Reconcile", note),
    )
    .await;
}

/// Writes the status after every object applied, then publishes the announcements and what
/// changed (a new cache, a scale, a rollout starting or completing); returns whether the cache
/// is ready.
async fn report(
    ctx: &Context,
    cache: &CasseroleCache,
    objects: &[Object],
    rollouts: &Rollouts,
    announced: Vec<kube::runtime::events::Event>,
) -> Result<bool, Error> {
    let now = Timestamp::now();
    let mut new = status::compute(cache, rollouts.cache, rollouts.etcd, now);
    let ready_pods = members(&ctx.client, cache).await?;
    let views = match &ready_pods {
        Some(pods) => crate::node_views::views(&*ctx.node_probe, pods).await,
        None => Vec::new(),
    };
    let names = ready_pods.map(|p| p.into_iter().map(|(name, _)| name).collect());
    status::set_members(&mut new, cache, names, &views, now);
    status::set_crd(&mut new, cache, ctx.crd_state.as_ref(), now);
    let ready = new
        .conditions
        .iter()
        .any(|c| c.type_ == status::READY && c.status == "True");
    let mut news = status::notable_changes(cache, &new, rollouts.cache.desired);
    if cache.status.is_none() {
        let names: Vec<String> = objects
            .iter()
            .map(|o| format!("{} {}", o.kind(), o.name()))
            .collect();
        news.insert(0, ("Created", format!("created {}", names.join(", "))));
    }
    if cache.status.as_ref() != Some(&new) {
        patch_status(&ctx.client, cache, new).await?;
    }
    for announcement in announced {
        publish(ctx, cache, announcement).await;
    }
    for (reason, note) in news {
        publish(
            ctx,
            cache,
            event(EventType::Normal, reason, "Reconcile", note),
        )
        .await;
    }
    Ok(ready)
}

/// Names (and addresses) of the cache pods that are ready (their `/readyz` needs the etcd
/// membership loaded), sorted; `None` when listing pods is not allowed.
async fn members(
    client: &Client,
    cache: &CasseroleCache,
) -> Result<Option<Vec<(String, Option<String>)>>, Error> {
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
    let mut found: Vec<(String, Option<String>)> = pods
        .items
        .iter()
        .filter(|p| ready(p))
        .map(|p| {
            (
                p.name_any(),
                p.status.as_ref().and_then(|s| s.pod_ip.clone()),
            )
        })
        .collect();
    found.sort();
    Ok(Some(found))
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
    // Best effort, like every Event: the status already says it.
    publish(
        ctx,
        cache,
        event(
            EventType::Warning,
            "InvalidSpec",
            "Reconcile",
            invalid.to_string(),
        ),
    )
    .await;
    ctx.clear_failures(&key(cache));
    Ok(())
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
