//! The reconcile step that heals a managed etcd: every member whose data is gone is removed and
//! added again through the membership API (`etcd_members`), and its pod restarted.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::events::EventType;
use tracing::{info, warn};

use crate::context::{event, publish, Context, Error};
use crate::crd::CasseroleCache;
use crate::etcd_members::{lost_members, replace};
use crate::resources::{self, etcd, selector_labels, Component};

/// Replaces every member of the cache's managed etcd whose data is gone (a cluster of one
/// member bootstraps anew on its own). Called while some member is not ready.
pub async fn heal(ctx: &Context, cache: &CasseroleCache) -> Result<(), Error> {
    let Some(managed) = &cache.spec.etcd.managed else {
        return Ok(());
    };
    if managed.replicas < 2 {
        return Ok(());
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &resources::namespace(cache));
    let selector = selector_labels(cache, Component::Etcd)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods = match api.list(&ListParams::default().labels(&selector)).await {
        Ok(pods) => pods.items,
        Err(kube::Error::Api(e)) if e.code == 403 => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let lost = lost_members(&pods);
    if lost.is_empty() {
        return Ok(());
    }
    let members = ctx.etcd_members.connect(&etcd::client_url(cache));
    for name in lost {
        let peer_url = etcd::member_peer_url(cache, &name);
        let (type_, reason, note) = match replace(&*members, &name, &peer_url).await {
            Ok(()) => {
                info!(member = %name, "re-added an etcd member whose data was gone");
                match api.delete(&name, &Default::default()).await {
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    other => drop(other?),
                }
                let note = format!("etcd member {name} lost its data: removed and re-added it, restarting its pod to rejoin");
                (EventType::Normal, "EtcdMemberReplaced", note)
            }
            Err(error) => {
                warn!(member = %name, %error, "could not replace an etcd member");
                let note = format!("etcd member {name} lost its data and could not be replaced: {error} (see docs/operator-runbook.md)");
                (EventType::Warning, "EtcdMemberReplaceFailed", note)
            }
        };
        publish(ctx, cache, event(type_, reason, "Replace", note)).await;
    }
    Ok(())
}
