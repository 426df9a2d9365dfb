//! `run --apply-crd`: the operator brings its own CRD up to date at start, because Helm never
//! upgrades the CRDs of a chart's `crds/` directory. It never downgrades one that a newer
//! release applied (during a rolling upgrade an old replica may still start). Whether or not
//! it applies, it reports an installed CRD older than itself ([`CrdState`]).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::resources::FIELD_MANAGER;
use crate::{crd_object, CRD_VERSION_ANNOTATION};

/// A release version as comparable numbers ("0.10.2" > "0.9.7"); pre-release suffixes are
/// ignored.
pub(crate) fn version(v: &str) -> Vec<u64> {
    v.split(['-', '+'])
        .next()
        .unwrap_or_default()
        .split('.')
        .map(|p| p.parse().unwrap_or(0))
        .collect()
}

/// Whether a CRD applied by `existing` (its version annotation) should be replaced by ours.
pub fn should_apply(existing: Option<&str>, ours: &str) -> bool {
    existing.is_none_or(|theirs| version(theirs) <= version(ours))
}

/// What the operator found of its CRD at start: reported on every cache as the `CRDCurrent`
/// condition and by the `casserole_operator_crd_current` gauge, because an outdated CRD
/// silently prunes new fields and lacks the newer validation rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CrdState {
    /// This release's CRD or a newer one is installed.
    Current,
    /// It is not: `reason` is `CRDApplyFailed`, `CRDOutdated` or `CRDUnreadable`.
    Problem {
        reason: &'static str,
        message: String,
    },
}

fn problem(reason: &'static str, message: String) -> CrdState {
    warn!(reason, %message, "the installed CRD is not this release's");
    CrdState::Problem { reason, message }
}

/// Reads the installed CRD and, when `apply` is set, applies this release's unless a newer
/// release's is in place. Never fails the operator: it still runs against the CRD that is
/// there, and says so.
pub async fn ensure(client: Client, apply: bool, metrics: &Metrics) -> CrdState {
    let state = check_and_apply(client, apply).await;
    metrics
        .crd_current
        .set(i64::from(state == CrdState::Current));
    if matches!(&state, CrdState::Problem { reason, .. } if *reason == "CRDApplyFailed") {
        metrics.crd_apply_failures.inc();
    }
    state
}

async fn check_and_apply(client: Client, apply: bool) -> CrdState {
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let ours = crd_object();
    let name = ours.name_any();
    let version = env!("CARGO_PKG_VERSION");
    let existing = match api.get_opt(&name).await {
        Ok(existing) => existing,
        Err(error) => {
            return problem(
                "CRDUnreadable",
                format!(
                "cannot read the CRD {name} ({error}); check the operator's ClusterRole binding"
            ),
            )
        }
    };
    let theirs = existing
        .as_ref()
        .and_then(|c| c.annotations().get(CRD_VERSION_ANNOTATION).cloned());
    if !should_apply(theirs.as_deref(), version) {
        info!(crd = %name, ?theirs, ours = version, "a newer CRD is installed; leaving it");
        return CrdState::Current;
    }
    if !apply {
        return match theirs.as_deref() {
            Some(v) if v == version => CrdState::Current,
            other => problem(
                "CRDOutdated",
                format!(
                    "the installed CRD is from release {}, this operator is {version}: apply crds/ of this release (crds.applyOnStart is off)",
                    other.unwrap_or("unknown")
                ),
            ),
        };
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match api.patch(&name, &params, &Patch::Apply(&ours)).await {
        Ok(_) => {
            info!(crd = %name, version, "applied the CRD");
            CrdState::Current
        }
        Err(error) => problem(
            "CRDApplyFailed",
            format!(
                "cannot apply the CRD {name} of release {version} over {} ({error}): the operator needs get and patch on it through a ClusterRoleBinding, or apply crds/ by hand",
                theirs.as_deref().unwrap_or("an unannotated one")
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::should_apply;

    #[test]
    fn upgrades_and_reapplies_but_never_downgrades() {
        assert!(should_apply(None, "0.1.0"));
        assert!(should_apply(Some("0.1.0"), "0.1.0"));
        assert!(should_apply(Some("0.9.7"), "0.10.2"));
        assert!(!should_apply(Some("0.10.2"), "0.9.7"));
        assert!(!should_apply(Some("1.0.0"), "0.99.0"));
    }
}
