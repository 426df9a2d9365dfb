//! `run --apply-crd`: the operator brings its own CRD up to date at start, because Helm never
//! upgrades the CRDs of a chart's `crds/` directory. It never downgrades one that a newer
//! release applied (during a rolling upgrade an old replica may still start).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use tracing::{info, warn};

use crate::resources::FIELD_MANAGER;
use crate::{crd_object, CRD_VERSION_ANNOTATION};

/// A release version as comparable numbers ("0.10.2" > "0.9.7"); pre-release suffixes are
/// ignored.
fn version(v: &str) -> Vec<u64> {
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

/// Applies the CRD unless a newer release's is in place. Failures (e.g. RBAC without the
/// rule) are logged: the operator still runs against the CRD that is there.
pub async fn apply(client: Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let ours = crd_object();
    let name = ours.name_any();
    let existing = match api.get_opt(&name).await {
        Ok(existing) => existing,
        Err(error) => {
            warn!(%error, crd = %name, "cannot read the CRD; not applying it (apply it by hand)");
            return;
        }
    };
    let theirs = existing
        .as_ref()
        .and_then(|c| c.annotations().get(CRD_VERSION_ANNOTATION).cloned());
    let version = env!("CARGO_PKG_VERSION");
    if !should_apply(theirs.as_deref(), version) {
        info!(crd = %name, ?theirs, ours = version, "a newer CRD is installed; leaving it");
        return;
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match api.patch(&name, &params, &Patch::Apply(&ours)).await {
        Ok(_) => info!(crd = %name, version, "applied the CRD"),
        Err(error) => warn!(%error, crd = %name, "cannot apply the CRD (apply it by hand)"),
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
