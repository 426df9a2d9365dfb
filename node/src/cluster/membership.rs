use std::{sync::Arc, time::Duration};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Member {
    pub id: String,
    pub url: String,
}
#[derive(Clone)]
pub struct ClusterMetrics {
    pub members: prometheus::IntGauge,
    pub etcd_errors: prometheus::IntCounter,
    pub lease_registrations: prometheus::IntCounter,
}
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub cluster_name: String,
    pub node_id: String,
    pub peering_url: String,
    pub ttl: Duration,
}
#[derive(Clone)]
pub struct Membership {
    me: Member,
    tx: Arc<tokio::sync::watch::Sender<Arc<Vec<Member>>>>,
}
impl Membership {
    pub fn standalone(me: Member) -> Membership {
        Self::fixed(me, vec![])
    }
    pub fn fixed(me: Member, mut peers: Vec<Member>) -> Membership {
        if !peers.contains(&me) {
            peers.push(me.clone());
        }
        peers.sort_by(|a, b| a.id.cmp(&b.id));
        Membership {
            me,
            tx: Arc::new(tokio::sync::watch::Sender::new(Arc::new(peers))),
        }
    }
    pub fn etcd(cfg: EtcdConfig, _metrics: ClusterMetrics) -> Membership {
        Self::standalone(Member {
            id: cfg.node_id,
            url: cfg.peering_url,
        })
    }
    pub fn self_member(&self) -> &Member {
        &self.me
    }
    pub fn members(&self) -> Arc<Vec<Member>> {
        self.tx.borrow().clone()
    }
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Arc<Vec<Member>>> {
        self.tx.subscribe()
    }
    pub fn is_loaded(&self) -> bool {
        true
    }
    pub async fn leave(&self) {}
}
