//! The reconciler's one `Context` (client, recorder, metrics, per-cache state), its `Error`, and
//! Event helpers: shared by the reconcile loop and the day-2 steps it calls (etcd member
//! replacement, token checks), which therefore never import the loop itself.

use crate::crd::CasseroleCache;
use crate::crd_upgrade::CrdState;
use crate::health::Liveness;
use crate::metrics::Metrics;
use crate::resources::{IpFamily, Object, FIELD_MANAGER};
use crate::secret_scope::SecretsGrant;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tracing::warn;

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
    /// RBAC does not let the operator use Secrets in the cache's namespace.
    #[error("the operator may not use Secrets in namespace {namespace} ({message}): {remedy}")]
    SecretsForbidden {
        namespace: String,
        message: String,
        remedy: String,
    },
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
    pub(crate) fn new(object: &Object, error: &kube::Error) -> ApplyFailure {
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
            Error::SecretsForbidden { .. } => "secrets_forbidden",
        }
    }

    /// The reason of the `Degraded` condition a failure sets.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Apply(_) => "ApplyFailed",
            Error::SecretsForbidden { .. } => "SecretAccessDenied",
            _ => "ReconcileFailed",
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
    /// What the operator found of its CRD at start (`None`: not checked, e.g. in tests).
    pub crd_state: Option<CrdState>,
    /// The operator's own namespace (admitted to managed etcd's client port).
    pub operator_namespace: Option<String>,
    /// How the operator reads each cache node's own view of its cluster.
    pub node_probe: Arc<dyn crate::node_views::NodeProbe>,
    /// How the operator reaches a managed etcd's membership API.
    pub etcd_members: Arc<dyn crate::etcd_members::Connect>,
    /// Who to grant Secrets to, told on a cache in a namespace where the operator has none.
    pub secrets_grant: SecretsGrant,
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
            crd_state: None,
            operator_namespace: None,
            etcd_members: Arc::new(crate::etcd_members::Gateway),
            node_probe: Arc::new(crate::node_views::MetricsProbe),
            secrets_grant: SecretsGrant::default(),
        }
    }

    pub fn with_secrets_grant(mut self, grant: SecretsGrant) -> Context {
        self.secrets_grant = grant;
        self
    }

    pub fn with_operator_namespace(mut self, ns: String) -> Context {
        self.operator_namespace = Some(ns);
        self
    }

    pub fn with_crd_state(mut self, state: CrdState) -> Context {
        self.crd_state = Some(state);
        self
    }

    pub fn with_liveness(mut self, liveness: Liveness) -> Context {
        self.liveness = liveness;
        self
    }

    pub fn with_ip_family(mut self, ip_family: IpFamily) -> Context {
        self.ip_family = ip_family;
        self
    }

    pub(crate) fn record_failure(&self, key: String) -> u32 {
        let mut failures = self.failures.lock().expect("not poisoned");
        let n = failures.entry(key).or_insert(0);
        *n += 1;
        *n
    }

    pub(crate) fn clear_failures(&self, key: &str) {
        self.failures.lock().expect("not poisoned").remove(key);
    }
}

pub(crate) fn event(type_: EventType, reason: &str, action: &str, note: String) -> Event {
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
pub(crate) async fn publish(ctx: &Context, cache: &CasseroleCache, event: Event) {
    if let Err(error) = ctx.recorder.publish(&event, &cache.object_ref(&())).await {
        warn!(%error, reason = %event.reason, "could not publish an event");
    }
}
