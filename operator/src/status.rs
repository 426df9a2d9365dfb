//! The status of a cache, computed from what the owned workloads report.
//!
//! Pure functions of (cache, observations, now), so the condition logic is tested without an
//! API server. `lastTransitionTime` only moves when a condition's status flips, which also
//! makes an unchanged status compare equal (and the reconciler skip the write).

use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::crd::{CasseroleCache, CasseroleCacheStatus};
use crate::crd_upgrade::CrdState;
use crate::resources::{selector_string, InvalidSpec};

pub const READY: &str = "Ready";
pub const ETCD_READY: &str = "EtcdReady";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const MEMBERS_READY: &str = "MembersReady";
/// Whether the installed CRD is this release's (see `crd_upgrade::CrdState`).
pub const CRD_CURRENT: &str = "CRDCurrent";

/// What a StatefulSet or DaemonSet reports about its pods.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rollout {
    /// Pods it wants.
    pub desired: i32,
    /// Pods that exist.
    pub current: i32,
    pub ready: i32,
    /// Pods already on the latest template.
    pub updated: i32,
    /// The controller has seen the latest spec (observedGeneration == generation).
    pub observed: bool,
}

impl Rollout {
    pub fn from_statefulset(s: &StatefulSet) -> Rollout {
        let desired = s.spec.replicas.unwrap_or(1);
        let Some(st) = &s.status else {
            return Rollout {
                desired,
                ..Rollout::default()
            };
        };
        Rollout {
            desired,
            current: st.replicas,
            ready: st.ready_replicas.unwrap_or(0),
            updated: st.updated_replicas.unwrap_or(0),
            observed: st.observed_generation.is_some()
                && st.observed_generation == s.metadata.generation,
        }
    }

    pub fn from_daemonset(d: &DaemonSet) -> Rollout {
        let Some(st) = &d.status else {
            return Rollout::default();
        };
        Rollout {
            desired: st.desired_number_scheduled,
            current: st.current_number_scheduled,
            ready: st.number_ready,
            updated: st.updated_number_scheduled.unwrap_or(0),
            observed: st.observed_generation.is_some()
                && st.observed_generation == d.metadata.generation,
        }
    }

    fn complete(&self) -> bool {
        self.observed && self.updated >= self.desired && self.current == self.desired
    }

    fn all_ready(&self) -> bool {
        self.ready >= self.desired
    }
}

/// Builds a condition, keeping the previous transition time if its status did not change.
fn condition(
    cache: &CasseroleCache,
    now: Timestamp,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = match cache.condition(type_) {
        Some(old) if old.status == status => old.last_transition_time.clone(),
        _ => Time(now),
    };
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: cache.metadata.generation,
        last_transition_time,
    }
}

/// The status after a successful apply. `etcd` is `None` for an external etcd.
pub fn compute(
    cache: &CasseroleCache,
    cache_pods: Rollout,
    etcd: Option<Rollout>,
    now: Timestamp,
) -> CasseroleCacheStatus {
    let (etcd_ok, etcd_reason, etcd_message) = match etcd {
        None => (true, "External", "using an external etcd".to_string()),
        Some(e) if e.desired > 0 && e.all_ready() => (
            true,
            "MembersReady",
            format!("{}/{} etcd members ready", e.ready, e.desired),
        ),
        Some(e) => (
            false,
            "WaitingForMembers",
            format!("{}/{} etcd members ready", e.ready, e.desired),
        ),
    };
    let pods = format!(
        "{}/{} cache pods ready",
        cache_pods.ready, cache_pods.desired
    );
    let rolling = !cache_pods.complete();
    let (progressing_reason, progressing_message) = if rolling {
        (
            "RollingOut",
            format!(
                "{}/{} cache pods updated, {}",
                cache_pods.updated, cache_pods.desired, pods
            ),
        )
    } else {
        ("RolloutComplete", format!("all cache pods updated, {pods}"))
    };
    // Degraded: the rollout is done, yet pods are missing; a rollout in progress is expected
    // to have some pods down and reports Progressing instead.
    let degraded = !rolling && !cache_pods.all_ready();
    let (ready, ready_reason) = if cache_pods.desired == 0 {
        (false, "NoReplicas")
    } else if !etcd_ok {
        (false, "EtcdNotReady")
    } else if !cache_pods.all_ready() {
        (false, "PodsNotReady")
    } else {
        (true, "AllReplicasReady")
    };
    CasseroleCacheStatus {
        observed_generation: cache.metadata.generation,
        replicas: cache_pods.current,
        ready_replicas: cache_pods.ready,
        upstream: upstream_shown(cache),
        selector: Some(selector_string(cache)),
        members: Vec::new(),
        conditions: vec![
            condition(cache, now, READY, ready, ready_reason, pods.clone()),
            condition(cache, now, ETCD_READY, etcd_ok, etcd_reason, etcd_message),
            condition(
                cache,
                now,
                PROGRESSING,
                rolling,
                progressing_reason,
                progressing_message,
            ),
            condition(
                cache,
                now,
                DEGRADED,
                degraded,
                if degraded {
                    "PodsUnavailable"
                } else {
                    "AsExpected"
                },
                if degraded { pods } else { String::new() },
            ),
        ],
    }
}

/// The upstream as the `Upstream` column shows it: without credentials.
pub fn upstream_shown(cache: &CasseroleCache) -> Option<String> {
    casserole_limits::parse_http_url(&cache.spec.upstream)
        .ok()
        .map(|u| u.redacted())
}

/// Records whether the installed CRD is current (`None`: not checked, no condition).
pub fn set_crd(
    status: &mut CasseroleCacheStatus,
    cache: &CasseroleCache,
    state: Option<&CrdState>,
    now: Timestamp,
) {
    let new = match state {
        None => return,
        Some(CrdState::Current) => condition(
            cache,
            now,
            CRD_CURRENT,
            true,
            "Current",
            "the installed CRD is this operator release's or newer".into(),
        ),
        Some(CrdState::Problem { reason, message }) => {
            condition(cache, now, CRD_CURRENT, false, reason, message.clone())
        }
    };
    upsert(status, new);
}

/// The status after a reconcile failed before or after applying (an API error, a decoding
/// error, Secrets the operator may not use there): `Degraded=True` with `reason`
/// (`ReconcileFailed`, `SecretAccessDenied`); the rest stays as it was.
pub fn reconcile_failed(
    cache: &CasseroleCache,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> CasseroleCacheStatus {
    let mut status = cache.status.clone().unwrap_or_default();
    status.selector = Some(selector_string(cache));
    upsert(
        &mut status,
        condition(cache, now, DEGRADED, true, reason, message.into()),
    );
    status
}

/// The status for a spec the operator refuses: Ready=False and Degraded=True with reason
/// `InvalidSpec` naming the field; counts and the other conditions stay as they were,
/// since nothing was changed.
pub fn invalid(cache: &CasseroleCache, err: &InvalidSpec, now: Timestamp) -> CasseroleCacheStatus {
    let mut status = cache.status.clone().unwrap_or_default();
    status.observed_generation = cache.metadata.generation;
    status.selector = Some(selector_string(cache));
    let message = format!("invalid spec: {err}");
    for new in [
        condition(cache, now, READY, false, "InvalidSpec", message.clone()),
        condition(cache, now, DEGRADED, true, "InvalidSpec", message),
    ] {
        upsert(&mut status, new);
    }
    status
}

/// Records the cluster members (cache pods whose `/readyz` passes, which needs their etcd
/// membership loaded) and `MembersReady`: True when there are as many as ready replicas and
/// every node that was asked counts them all itself (`views`: each node's own member count).
/// `None`: the pods could not be read, so the condition says Unknown.
pub fn set_members(
    status: &mut CasseroleCacheStatus,
    cache: &CasseroleCache,
    members: Option<Vec<String>>,
    views: &[(String, Result<i64, String>)],
    now: Timestamp,
) {
    let Some(members) = members else {
        let mut unknown = condition(
            cache,
            now,
            MEMBERS_READY,
            false,
            "Unknown",
            "the cache pods could not be listed".into(),
        );
        unknown.status = "Unknown".into();
        upsert(status, unknown);
        return;
    };
    let n = members.len() as i32;
    let mut message = format!("{n} members, {} ready replicas", status.ready_replicas);
    let disagree: Vec<String> = views
        .iter()
        .filter_map(|(pod, seen)| match seen {
            Ok(k) if *k == i64::from(n) => None,
            Ok(k) => Some(format!("{pod} sees {k}")),
            Err(e) => Some(format!("{pod}: {e}")),
        })
        .collect();
    let (ok, reason) = if n == 0 || n != status.ready_replicas {
        (false, "MembersMissing")
    } else if views
        .iter()
        .any(|(_, v)| v.is_ok() && *v != Ok(i64::from(n)))
    {
        (false, "MembershipDiffers")
    } else if views.iter().any(|(_, v)| v.is_err()) {
        (false, "MembershipUnknown")
    } else {
        (true, "AllMembersReady")
    };
    if !disagree.is_empty() {
        message = format!("{message}; {}", disagree.join(", "));
    }
    status.members = members;
    upsert(
        status,
        condition(cache, now, MEMBERS_READY, ok, reason, message),
    );
}

/// What changed between the previous status and the new one that users want told as a Normal
/// Event: `(reason, note)` pairs for a scale (a new spec with a different pod count) and for a
/// rollout starting or completing.
pub fn notable_changes(
    cache: &CasseroleCache,
    new: &CasseroleCacheStatus,
    desired: i32,
) -> Vec<(&'static str, String)> {
    let Some(old) = cache.status.as_ref() else {
        return Vec::new(); // a new cache: its creation is news enough
    };
    let mut changes = Vec::new();
    let new_spec = old.observed_generation != cache.metadata.generation;
    if new_spec && old.replicas != desired {
        changes.push((
            "Scaled",
            format!("scaling from {} to {desired} cache pods", old.replicas),
        ));
    }
    let progressing = |s: &CasseroleCacheStatus| {
        s.conditions
            .iter()
            .any(|c| c.type_ == PROGRESSING && c.status == "True")
    };
    let known = old.conditions.iter().any(|c| c.type_ == PROGRESSING);
    match (known && progressing(old), progressing(new)) {
        (false, true) if known => changes.push((
            "RollingOut",
            "the pod template changed: rolling the cache pods".into(),
        )),
        (true, false) => changes.push(("RolloutComplete", "all cache pods updated".into())),
        _ => {}
    }
    changes
}

/// The status after some objects could not be applied: `Degraded=True` with reason
/// `ApplyFailed` and the API's messages; counts and the other conditions stay as they were,
/// since the workloads may be serving with their previous spec. `observedGeneration` stays too:
/// this generation is not applied yet (and its leftovers are pruned once it is).
pub fn apply_failed(cache: &CasseroleCache, message: &str, now: Timestamp) -> CasseroleCacheStatus {
    let mut status = cache.status.clone().unwrap_or_default();
    status.selector = Some(selector_string(cache));
    upsert(
        &mut status,
        condition(cache, now, DEGRADED, true, "ApplyFailed", message.into()),
    );
    status
}

fn upsert(status: &mut CasseroleCacheStatus, new: Condition) {
    match status.conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => *old = new,
        None => status.conditions.push(new),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing::default_cache;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    fn done(n: i32) -> Rollout {
        Rollout {
            desired: n,
            current: n,
            ready: n,
            updated: n,
            observed: true,
        }
    }

    fn cond<'a>(s: &'a CasseroleCacheStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn all_ready_is_ready_and_not_progressing() {
        let s = compute(&default_cache(), done(3), Some(done(3)), at(100));
        assert_eq!((s.replicas, s.ready_replicas), (3, 3));
        assert_eq!(cond(&s, READY).status, "True");
        assert_eq!(cond(&s, ETCD_READY).status, "True");
        assert_eq!(cond(&s, PROGRESSING).status, "False");
        assert_eq!(cond(&s, DEGRADED).status, "False");
        assert_eq!(cond(&s, READY).observed_generation, Some(1));
        assert!(s
            .selector
            .unwrap()
            .contains("app.kubernetes.io/instance=web"));
    }

    #[test]
    fn etcd_without_quorum_blocks_ready() {
        let etcd = Rollout {
            ready: 1,
            ..done(3)
        };
        let s = compute(&default_cache(), done(3), Some(etcd), at(100));
        assert_eq!(cond(&s, ETCD_READY).reason, "WaitingForMembers");
        assert_eq!(cond(&s, ETCD_READY).message, "1/3 etcd members ready");
        assert_eq!(cond(&s, READY).reason, "EtcdNotReady");
        // External etcd is assumed healthy.
        let s = compute(&default_cache(), done(3), None, at(100));
        assert_eq!(cond(&s, ETCD_READY).reason, "External");
    }

    #[test]
    fn rollout_is_progressing_and_missing_pods_after_it_are_degraded() {
        let rolling = Rollout {
            updated: 1,
            ready: 2,
            ..done(3)
        };
        let s = compute(&default_cache(), rolling, None, at(100));
        assert_eq!(cond(&s, PROGRESSING).status, "True");
        assert_eq!(cond(&s, DEGRADED).status, "False");
        assert_eq!(cond(&s, READY).status, "False");
        let broken = Rollout {
            ready: 1,
            ..done(3)
        };
        let s = compute(&default_cache(), broken, None, at(100));
        assert_eq!(cond(&s, PROGRESSING).status, "False");
        assert_eq!(cond(&s, DEGRADED).status, "True");
        assert_eq!(cond(&s, DEGRADED).message, "1/3 cache pods ready");
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let mut cache = default_cache();
        cache.status = Some(compute(&cache, done(3), None, at(100)));
        let same = compute(&cache, done(3), None, at(200));
        assert_eq!(
            Some(&same),
            cache.status.as_ref(),
            "unchanged status compares equal"
        );
        let flipped = compute(
            &cache,
            Rollout {
                ready: 2,
                ..done(3)
            },
            None,
            at(300),
        );
        assert_eq!(cond(&flipped, READY).last_transition_time, Time(at(300)));
        assert_eq!(
            cond(&flipped, ETCD_READY).last_transition_time,
            Time(at(100))
        );
    }

    #[test]
    fn scaling_and_rollouts_are_news_once() {
        let mut cache = default_cache();
        assert!(notable_changes(&cache, &compute(&cache, done(3), None, at(1)), 3).is_empty());
        cache.status = Some(compute(&cache, done(3), None, at(1)));
        // Same spec, same pods: nothing to tell.
        assert!(notable_changes(&cache, &compute(&cache, done(3), None, at(2)), 3).is_empty());
        // A new generation with 5 pods wanted: scaled; a template change: rolling out.
        cache.metadata.generation = Some(2);
        let rolling = Rollout {
            updated: 1,
            ..done(5)
        };
        let new = compute(&cache, rolling, None, at(3));
        let reasons: Vec<_> = notable_changes(&cache, &new, 5)
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        assert_eq!(reasons, ["Scaled", "RollingOut"]);
        cache.status = Some(new);
        let done_now = compute(&cache, done(5), None, at(4));
        let reasons: Vec<_> = notable_changes(&cache, &done_now, 5)
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        assert_eq!(reasons, ["RolloutComplete"]);
    }

    #[test]
    fn members_ready_when_every_ready_replica_is_a_member() {
        let cache = default_cache();
        let mut s = compute(&cache, done(3), None, at(100));
        let names = |n: usize| Some((0..n).map(|i| format!("web-{i}")).collect());
        set_members(&mut s, &cache, names(3), &[], at(100));
        assert_eq!(s.members, ["web-0", "web-1", "web-2"]);
        assert_eq!(cond(&s, MEMBERS_READY).status, "True");
        // Every node's own view counts: one that sees fewer members is a split.
        let views = [
            ("web-0".to_string(), Ok(3)),
            ("web-1".to_string(), Ok(2)),
            ("web-2".to_string(), Ok(3)),
        ];
        set_members(&mut s, &cache, names(3), &views, at(100));
        assert_eq!(cond(&s, MEMBERS_READY).reason, "MembershipDiffers");
        assert!(cond(&s, MEMBERS_READY).message.ends_with("web-1 sees 2"));
        let unreachable = [("web-0".to_string(), Err("timed out".to_string()))];
        set_members(&mut s, &cache, names(3), &unreachable, at(100));
        assert_eq!(cond(&s, MEMBERS_READY).reason, "MembershipUnknown");
        set_members(&mut s, &cache, names(2), &[], at(100));
        assert_eq!(cond(&s, MEMBERS_READY).status, "False");
        assert_eq!(cond(&s, MEMBERS_READY).reason, "MembersMissing");
        assert_eq!(
            cond(&s, MEMBERS_READY).message,
            "2 members, 3 ready replicas"
        );
        set_members(&mut s, &cache, None, &[], at(100));
        assert_eq!(cond(&s, MEMBERS_READY).status, "Unknown");
    }

    #[test]
    fn invalid_spec_sets_ready_false_and_keeps_the_rest() {
        let mut cache = default_cache();
        cache.status = Some(compute(&cache, done(3), None, at(100)));
        let err = InvalidSpec {
            field: "spec.passThrough[0]".into(),
            message: "invalid regex".into(),
        };
        let s = invalid(&cache, &err, at(200));
        assert_eq!(cond(&s, READY).status, "False");
        assert_eq!(cond(&s, READY).reason, "InvalidSpec");
        assert!(cond(&s, READY).message.contains("spec.passThrough[0]"));
        assert_eq!(cond(&s, DEGRADED).status, "True");
        assert_eq!(cond(&s, ETCD_READY).last_transition_time, Time(at(100)));
        assert_eq!(s.ready_replicas, 3);
    }
}
