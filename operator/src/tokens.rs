//! The tokens the cache pods read at start: the peer token Secret the operator creates once
//! (and validates on every read, with an optional `previous` token during a rotation), and the
//! admin token Secret the user names in `spec.adminToken`.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::runtime::events::EventType;
use tracing::info;

use crate::context::{event, publish, Context, Error};
use crate::crd::CasseroleCache;
use crate::resources::{self, secret, InvalidSpec};

/// What the pods' template needs to know of the tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tokens {
    /// Fingerprint of the peer token (and of the previous one, when there is one).
    pub peer_fingerprint: String,
    pub peer_previous: bool,
    pub admin_fingerprint: Option<String>,
}

fn invalid(field: String, message: String) -> InvalidSpec {
    InvalidSpec { field, message }
}

fn value(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    Some(String::from_utf8_lossy(&bytes.0).trim().to_string())
}

/// Checks the peer token Secret's content as the node will read it (trimmed, long enough).
pub fn check_peer_secret(
    cache: &CasseroleCache,
    s: &Secret,
) -> Result<(String, bool), InvalidSpec> {
    let field = |key: &str| format!("Secret {}/{key}", secret::peer_token_secret_name(cache));
    let token = value(s, secret::TOKEN_KEY).unwrap_or_default();
    casserole_limits::check_peer_token(&token).map_err(|m| invalid(field(secret::TOKEN_KEY), m))?;
    let previous = value(s, secret::PREVIOUS_TOKEN_KEY);
    if let Some(previous) = &previous {
        casserole_limits::check_peer_token(previous)
            .map_err(|m| invalid(field(secret::PREVIOUS_TOKEN_KEY), m))?;
    }
    let mut fingerprinted = token.clone();
    if let Some(previous) = &previous {
        fingerprinted = format!("{fingerprinted}\n{previous}");
    }
    Ok((fingerprinted, previous.is_some()))
}

/// Creates the peer token Secret if it does not exist yet, reads the admin token Secret, and
/// returns what the pods need; a token the node would refuse is an `InvalidSpec`. An existing
/// peer token Secret (ours, or one the user provided under the same name) is never written, so
/// a reconcile never rotates the token; a deleted one is made again (and the pods roll onto it,
/// through the fingerprint annotation).
pub async fn ensure(
    ctx: &Context,
    cache: &CasseroleCache,
) -> Result<Result<Tokens, InvalidSpec>, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &resources::namespace(cache));
    let name = secret::peer_token_secret_name(cache);
    let existing = match api
        .get_opt(&name)
        .await
        .map_err(|e| access(ctx, cache, e))?
    {
        Some(existing) => existing,
        None => create_peer_token(ctx, cache, &api).await?,
    };
    let (peer, peer_previous) = match check_peer_secret(cache, &existing) {
        Ok(found) => found,
        Err(invalid) => return Ok(Err(invalid)),
    };
    let admin_fingerprint = match &cache.spec.admin_token {
        None => None,
        Some(admin) => {
            let s = api
                .get_opt(&admin.name)
                .await
                .map_err(|e| access(ctx, cache, e))?;
            let token = s.as_ref().and_then(|s| value(s, &admin.key));
            let checked = match token {
                None => Err(format!("Secret {} has no key {}", admin.name, admin.key)),
                Some(token) => casserole_limits::check_admin_token(&token).map(|()| token),
            };
            match checked {
                Ok(token) => Some(secret::keyed_fingerprint(peer.as_bytes(), token.as_bytes())),
                Err(m) => return Ok(Err(invalid("spec.adminToken".into(), m))),
            }
        }
    };
    Ok(Ok(Tokens {
        peer_fingerprint: secret::token_fingerprint(peer.as_bytes()),
        peer_previous,
        admin_fingerprint,
    }))
}

async fn create_peer_token(
    ctx: &Context,
    cache: &CasseroleCache,
    api: &Api<Secret>,
) -> Result<Secret, Error> {
    let name = secret::peer_token_secret_name(cache);
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
            // What was sent: `stringData`, as `data` (the answer of a create may omit it).
            let mut made = new;
            made.data = made.string_data.take().map(|m| {
                m.into_iter()
                    .map(|(k, v)| (k, k8s_openapi::ByteString(v.into_bytes())))
                    .collect()
            });
            Ok(made)
        }
        // Lost a race with another writer: theirs is as good as ours.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            api.get(&name).await.map_err(|e| access(ctx, cache, e))
        }
        Err(e) => Err(access(ctx, cache, e)),
    }
}

/// A refusal to read or create a Secret is the install's RBAC (Secrets are granted per
/// namespace): an error that names the namespace and how to grant them there.
fn access(ctx: &Context, cache: &CasseroleCache, error: kube::Error) -> Error {
    match error {
        kube::Error::Api(e) if e.code == 403 => {
            let namespace = resources::namespace(cache);
            Error::SecretsForbidden {
                remedy: ctx.secrets_grant.remedy(&namespace),
                namespace,
                message: e.message,
            }
        }
        other => other.into(),
    }
}
