//! Where the operator uses Secrets (each cache's peer token, the admin token a spec names).
//!
//! Kubernetes RBAC cannot grant "only the Secrets with this label", so the operator's Secret
//! permission is granted per namespace (a RoleBinding of its Secrets ClusterRole there), and
//! it watches its own Secrets (label-selected, metadata only) in those namespaces only. A
//! cache in a namespace without that grant is told how to give it (`SecretAccessDenied`).

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};

/// `--secret-namespace` value that means every namespace (a cluster-wide Secret permission).
pub const EVERY_NAMESPACE: &str = "*";

/// The namespaces whose Secrets the operator watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretScope {
    /// Every namespace: the install granted Secrets cluster-wide (an explicit choice).
    Everywhere,
    Namespaces(Vec<String>),
    /// Nowhere (`--no-secret-watch`): RBAC then needs no `list`/`watch` on Secrets.
    Unwatched,
}

impl SecretScope {
    /// The watched namespace when there is one; else `--secret-namespace` (`*` for every
    /// namespace); else the operator's own namespace, the one every install grants.
    pub fn resolve(
        watch_namespace: Option<&str>,
        secret_namespaces: &[String],
        own_namespace: &str,
    ) -> SecretScope {
        if let Some(ns) = watch_namespace {
            return SecretScope::Namespaces(vec![ns.to_string()]);
        }
        if secret_namespaces.iter().any(|n| n == EVERY_NAMESPACE) {
            return SecretScope::Everywhere;
        }
        let mut namespaces: Vec<String> = secret_namespaces
            .iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect();
        if namespaces.is_empty() {
            namespaces.push(own_namespace.to_string());
        }
        namespaces.sort();
        namespaces.dedup();
        SecretScope::Namespaces(namespaces)
    }

    fn apis(&self, client: &Client) -> Vec<Api<PartialObjectMeta<Secret>>> {
        match self {
            SecretScope::Everywhere => vec![Api::all(client.clone())],
            SecretScope::Namespaces(list) => list
                .iter()
                .map(|n| Api::namespaced(client.clone(), n))
                .collect(),
            SecretScope::Unwatched => Vec::new(),
        }
    }
}

/// Changes of the operator's own Secrets (label-selected, metadata only: the operator never
/// holds a namespace's Secrets in memory) in the scope's namespaces.
pub fn triggers(
    client: &Client,
    scope: &SecretScope,
    selector: watcher::Config,
) -> impl futures::Stream<Item = Result<PartialObjectMeta<Secret>, watcher::Error>> + Send {
    let watches = scope.apis(client).into_iter().map(|api| {
        watcher(api, selector.clone())
            .default_backoff()
            .touched_objects()
            .boxed()
    });
    // A stream that never yields when nothing is watched: the controller's triggers stay open.
    futures::stream::select_all(watches.chain([futures::stream::pending().boxed()]))
}

/// Who the operator is, to tell a namespace's admin how to grant it Secrets there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretsGrant {
    /// The ClusterRole holding the operator's Secret permissions.
    pub cluster_role: String,
    /// The operator's ServiceAccount, `namespace:name`.
    pub service_account: String,
}

impl Default for SecretsGrant {
    /// The names `operator/deploy/operator.yaml` uses.
    fn default() -> SecretsGrant {
        SecretsGrant {
            cluster_role: "casserole-operator-secrets".into(),
            service_account: "casserole-system:casserole-operator".into(),
        }
    }
}

impl SecretsGrant {
    /// The command that grants the operator Secrets in `namespace`, and the chart's way.
    pub fn remedy(&self, namespace: &str) -> String {
        format!(
            "grant them with `kubectl -n {namespace} create rolebinding {role} --clusterrole={role} --serviceaccount={sa}` (or list {namespace} in the chart's rbac.secretNamespaces)",
            role = self.cluster_role,
            sa = self.service_account,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_watched_namespace_is_the_only_secret_namespace() {
        let scope = SecretScope::resolve(Some("cdn"), &list(&["*", "ml"]), "ops");
        assert_eq!(scope, SecretScope::Namespaces(list(&["cdn"])));
    }

    #[test]
    fn without_a_list_only_the_operators_own_namespace_is_watched() {
        let scope = SecretScope::resolve(None, &[], "casserole-system");
        assert_eq!(scope, SecretScope::Namespaces(list(&["casserole-system"])));
        let blank = SecretScope::resolve(None, &list(&[" ", ""]), "casserole-system");
        assert_eq!(blank, SecretScope::Namespaces(list(&["casserole-system"])));
    }

    #[test]
    fn listed_namespaces_are_watched_and_every_namespace_only_when_asked() {
        let scope = SecretScope::resolve(None, &list(&["ml", "cdn", "ml"]), "ops");
        assert_eq!(scope, SecretScope::Namespaces(list(&["cdn", "ml"])));
        let all = SecretScope::resolve(None, &list(&["cdn", "*"]), "ops");
        assert_eq!(all, SecretScope::Everywhere);
    }

    /// The paths (and whether label-selected) of the first requests the triggers make.
    async fn first_requests(scope: &SecretScope, n: usize) -> Vec<(String, bool)> {
        let (client, mut server) = crate::mock::client();
        let selector =
            watcher::Config::default().labels("app.kubernetes.io/managed-by=casserole-operator");
        let mut stream = Box::pin(triggers(&client, scope, selector));
        let mut seen = Vec::new();
        for _ in 0..n {
            let next = async {
                loop {
                    tokio::select! {
                        request = server.0.next_request() => return request,
                        _ = futures::StreamExt::next(&mut stream) => {}
                    }
                }
            };
            let (request, _answer) = tokio::time::timeout(std::time::Duration::from_secs(5), next)
                .await
                .expect("a request")
                .expect("client alive");
            let query = request.uri().query().unwrap_or_default().to_string();
            seen.push((
                request.uri().path().to_string(),
                query.contains("labelSelector=app.kubernetes.io%2Fmanaged-by%3Dcasserole-operator"),
            ));
        }
        seen.sort();
        seen
    }

    #[tokio::test]
    async fn secrets_are_watched_label_selected_in_each_granted_namespace_only() {
        let scope = SecretScope::Namespaces(list(&["cdn", "ml"]));
        assert_eq!(
            first_requests(&scope, 2).await,
            [
                ("/api/v1/namespaces/cdn/secrets".to_string(), true),
                ("/api/v1/namespaces/ml/secrets".to_string(), true)
            ]
        );
        let everywhere = first_requests(&SecretScope::Everywhere, 1).await;
        assert_eq!(everywhere, [("/api/v1/secrets".to_string(), true)]);
    }

    #[tokio::test]
    async fn unwatched_secrets_make_no_request_and_the_triggers_stay_open() {
        let (client, server) = crate::mock::client();
        let mut stream = Box::pin(triggers(
            &client,
            &SecretScope::Unwatched,
            watcher::Config::default(),
        ));
        let next = futures::StreamExt::next(&mut stream);
        let waited = tokio::time::timeout(std::time::Duration::from_millis(200), next).await;
        assert!(waited.is_err(), "the stream yielded or ended");
        drop(stream);
        drop(client);
        server.done().await;
    }

    #[test]
    fn the_remedy_names_the_role_the_account_and_the_namespace() {
        let grant = SecretsGrant {
            cluster_role: "casserole-operator-secrets".into(),
            service_account: "ops:casserole-operator".into(),
        };
        assert_eq!(
            grant.remedy("team-a"),
            "grant them with `kubectl -n team-a create rolebinding casserole-operator-secrets --clusterrole=casserole-operator-secrets --serviceaccount=ops:casserole-operator` (or list team-a in the chart's rbac.secretNamespaces)"
        );
    }
}
