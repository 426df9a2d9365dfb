//! `casserole-operator run`: the controller, behind leader election, with its HTTP endpoints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client};
use tracing::{error, info, warn};

use crate::crd::CasseroleCache;
use crate::health::Liveness;
use crate::leader::{LeaseLock, Timing};
use crate::metrics::Metrics;
use crate::reconcile::{error_policy, reconcile, Context};
use crate::resources::{IpFamily, FIELD_MANAGER};
use crate::secret_scope::{self, SecretScope, SecretsGrant};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Address of the /metrics and /healthz endpoints.
    #[arg(long, env = "METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    pub metrics_address: SocketAddr,
    /// Only watch CasseroleCaches in this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Namespace of the leader Lease (default: the operator's own, from POD_NAMESPACE, else
    /// the client's default namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Name of the leader Lease.
    #[arg(long, env = "LEASE_NAME", default_value = "casserole-operator")]
    pub lease_name: String,
    /// This replica's identity in the Lease (default: POD_NAME, else the hostname).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Seconds a Lease stays valid without renewal; it is renewed every third of that.
    #[arg(long, env = "LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", default_value = "json", value_parser = ["json", "text"])]
    pub log_format: String,
    /// IP family of pod addresses, which decides how cache pods spell their peering URL
    /// (default: the family of this pod's own address, --pod-ip, else IPv4).
    #[arg(long, env = "POD_IP_FAMILY", value_enum)]
    pub pod_ip_family: Option<IpFamily>,
    /// This pod's address (downward API `status.podIP`): pods of one cluster share a family.
    #[arg(long, env = "POD_IP")]
    pub pod_ip: Option<std::net::IpAddr>,
    /// Apply this release's CRD at start unless a newer one is installed (Helm never upgrades
    /// CRDs); needs `get` and `patch` on the CRD.
    #[arg(long, env = "APPLY_CRD")]
    pub apply_crd: bool,
    /// Namespaces whose Secrets the operator may use, when it watches every namespace
    /// (repeatable or comma-separated; `*`: every namespace, which needs a cluster-wide Secret
    /// permission): its own Secrets are watched there only, matching RBAC granted per
    /// namespace. Default: the operator's own namespace. Ignored with --watch-namespace.
    #[arg(
        long = "secret-namespace",
        env = "SECRET_NAMESPACES",
        value_delimiter = ','
    )]
    pub secret_namespaces: Vec<String>,
    /// Do not watch Secrets at all, so RBAC needs only `get` and `create` on them (no `list`,
    /// which would let it read every Secret of a granted namespace): a deleted or rotated peer
    /// token is then noticed at the next resync (at most 5 minutes) instead of at once.
    #[arg(long, env = "NO_SECRET_WATCH")]
    pub no_secret_watch: bool,
    /// The ClusterRole of the operator's Secret permissions, named in the remedy a cache in a
    /// namespace without them is told.
    #[arg(
        long,
        env = "SECRETS_CLUSTER_ROLE",
        default_value = "casserole-operator-secrets"
    )]
    pub secrets_cluster_role: String,
    /// The operator's ServiceAccount (in POD_NAMESPACE), named in that remedy too.
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "casserole-operator")]
    pub service_account: String,
    /// /healthz fails once a reconcile has run this long (its requests time out far sooner).
    #[arg(long, env = "STUCK_RECONCILE_SECONDS", default_value_t = 300)]
    pub stuck_reconcile_seconds: u64,
}

impl RunArgs {
    /// `--metrics-address`, where "every IPv4 interface" becomes "every IPv6 interface" on an
    /// IPv6 pod (which has no IPv4 address the kubelet's probes could reach).
    fn metrics_bind_address(&self) -> SocketAddr {
        let addr = self.metrics_address;
        if self.ip_family() == IpFamily::IPv6 && addr.ip() == std::net::Ipv4Addr::UNSPECIFIED {
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, addr.port()))
        } else {
            addr
        }
    }

    fn ip_family(&self) -> IpFamily {
        self.pod_ip_family
            .or(self.pod_ip.map(IpFamily::of))
            .unwrap_or_default()
    }
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube=warn".into());
    // Colours only on a terminal: `kubectl logs` and log collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

pub fn main(args: RunArgs) -> anyhow::Result<()> {
    init_tracing(&args.log_format);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

/// The API of one kind, in the watched namespace or all of them.
fn owned<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The controller: caches, their owned objects, and the operator's own Secrets.
fn controller(
    args: &RunArgs,
    watch_client: &Client,
    secrets: &SecretScope,
    ctx: Arc<Context>,
) -> impl std::future::Future<Output = ()> {
    let ns = args.watch_namespace.as_deref();
    let selector =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={FIELD_MANAGER}"));
    info!(ip_family = ?ctx.ip_family, ?secrets, "pod IP family, Secrets watched");
    Controller::new(
        owned::<CasseroleCache>(watch_client, ns),
        watcher::Config::default().any_semantic(),
    )
    .owns(owned::<StatefulSet>(watch_client, ns), selector.clone())
    .owns(owned::<DaemonSet>(watch_client, ns), selector.clone())
    .owns(owned::<Service>(watch_client, ns), selector.clone())
    .owns(
        owned::<PodDisruptionBudget>(watch_client, ns),
        selector.clone(),
    )
    .owns(owned::<NetworkPolicy>(watch_client, ns), selector.clone())
    // The peer token: deleting it makes the operator create a new one and roll the pods.
    // Metadata only, only the operator's own (label-selected), and only where it may use
    // Secrets: elsewhere the periodic requeue notices a change.
    .owns_stream(secret_scope::triggers(watch_client, secrets, selector))
    .shutdown_on_signal()
    .run(reconcile, error_policy, ctx)
    .for_each(|result| async move {
        if let Err(e) = result {
            warn!(error = %e, "reconcile trigger failed");
        }
    })
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler can be installed");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Read timeout of the reconciler's requests: a hung API server fails a reconcile (which is
/// retried) instead of stalling it.
const API_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Read timeout of the watches: above the 290 s the API server keeps a watch open.
const WATCH_READ_TIMEOUT: Duration = Duration::from_secs(330);

/// A client from the usual configuration (in-cluster or kubeconfig) with a read timeout.
async fn client_with_read_timeout(read_timeout: Duration) -> anyhow::Result<Client> {
    let mut config = kube::Config::infer().await?;
    config.read_timeout = Some(read_timeout);
    // Count the timeout from each request, not from when a pooled connection went idle.
    config.reset_reader_on_write = true;
    Ok(Client::try_from(config)?)
}

/// This replica's identity, the lease's namespace and the lock on it.
async fn leader_lock(
    args: &RunArgs,
    client: &kube::Client,
) -> anyhow::Result<(String, String, LeaseLock)> {
    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("{FIELD_MANAGER}-{}", std::process::id()));
    let lease_ns = args
        .lease_namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let duration = Duration::from_secs(args.lease_duration_seconds.max(3));
    let timing = Timing::for_lease(duration);
    let lock = LeaseLock::new(
        Api::<Lease>::namespaced(
            client_with_read_timeout(timing.request_timeout()).await?,
            &lease_ns,
        ),
        &args.lease_name,
        &identity,
        duration,
    );
    Ok((identity, lease_ns, lock))
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = client_with_read_timeout(API_READ_TIMEOUT).await?;
    let watch_client = client_with_read_timeout(WATCH_READ_TIMEOUT).await?;
    let metrics = Metrics::default();
    let liveness = Liveness::new(Duration::from_secs(args.stuck_reconcile_seconds));
    let (addr, serve) = crate::server::bind(
        args.metrics_bind_address(),
        metrics.clone(),
        liveness.clone(),
    )
    .await?;
    tokio::spawn(serve);
    info!(%addr, "serving /metrics and /healthz");

    let crd_state = crate::crd_upgrade::ensure(client.clone(), args.apply_crd, &metrics).await;

    let (identity, lease_ns, lock) = leader_lock(&args, &client).await?;
    info!(%identity, lease = %args.lease_name, namespace = %lease_ns, "waiting for leadership");
    // A standby runs as PID 1 in its container, where SIGTERM without a handler is ignored:
    // without this it would wait out the whole termination grace period.
    let Some(acquired) = lock.acquire_unless(shutdown_signal()).await else {
        info!("shutting down while standing by");
        return Ok(());
    };
    metrics.leader.set(1);
    info!(%identity, "leading");

    let ctx = Arc::new(
        Context::new(client.clone(), metrics.clone(), Some(identity))
            .with_ip_family(args.ip_family())
            .with_liveness(liveness)
            .with_crd_state(crd_state)
            .with_operator_namespace(lease_ns.clone())
            .with_secrets_grant(SecretsGrant {
                cluster_role: args.secrets_cluster_role.clone(),
                service_account: format!("{lease_ns}:{}", args.service_account),
            }),
    );
    let secrets = if args.no_secret_watch {
        SecretScope::Unwatched
    } else {
        SecretScope::resolve(
            args.watch_namespace.as_deref(),
            &args.secret_namespaces,
            &lease_ns,
        )
    };
    let controller = controller(&args, &watch_client, &secrets, ctx);

    tokio::select! {
        () = controller => {
            info!("shutting down");
            if let Err(e) = lock.release().await {
                warn!(error = %e, "could not release the leader lease");
            }
            metrics.leader.set(0);
            Ok(())
        }
        lost = lock.hold(acquired) => {
            // Another replica may already be reconciling: stop at once. The pod restarts
            // and rejoins the election as a standby.
            metrics.leader.set(0);
            error!(?lost, "lost the leader lease");
            anyhow::bail!("lost the leader lease: {lost:?}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn args(extra: &[&str]) -> RunArgs {
        let mut argv = vec!["run"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().run
    }

    #[test]
    fn ip_family_follows_the_pods_own_address_and_moves_the_metrics_listener() {
        let v4 = args(&["--pod-ip=10.0.0.7"]);
        assert_eq!(v4.ip_family(), IpFamily::IPv4);
        assert_eq!(v4.metrics_bind_address().to_string(), "0.0.0.0:8080");
        let v6 = args(&["--pod-ip=fd00::7"]);
        assert_eq!(v6.ip_family(), IpFamily::IPv6);
        assert_eq!(v6.metrics_bind_address().to_string(), "[::]:8080");
        let forced = args(&["--pod-ip=10.0.0.7", "--pod-ip-family=IPv6"]);
        assert_eq!(forced.ip_family(), IpFamily::IPv6);
        let explicit = args(&["--pod-ip=fd00::7", "--metrics-address=127.0.0.1:9000"]);
        assert_eq!(
            explicit.metrics_bind_address().to_string(),
            "127.0.0.1:9000"
        );
    }
}
