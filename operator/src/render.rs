//! `casserole-operator render`: every object the operator would apply, as YAML, for GitOps
//! review and for schema validation in CI.

use kube::ResourceExt;
use serde::Deserialize;

use crate::crd::CasseroleCache;
use crate::resources::{self, secret, Object, DEFAULT_NAMESPACE};

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("document {index}: not a CasseroleCache: {source}")]
    Parse {
        index: usize,
        source: serde_yaml::Error,
    },
    #[error("document {index}: expected apiVersion casserole.io/v1alpha1 or v1beta1, kind CasseroleCache")]
    WrongKind { index: usize },
    #[error("--peer-token: {0} (the node refuses a shorter one)")]
    PeerToken(String),
    #[error("{name}: invalid spec: {source}")]
    Invalid {
        name: String,
        source: resources::InvalidSpec,
    },
}

/// Options of one render.
#[derive(Clone, Debug, Default)]
pub struct RenderOptions {
    /// Overrides (or supplies) the namespace of every cache.
    pub namespace: Option<String>,
    /// Peer token to put in the Secret; a fresh random one when unset.
    pub peer_token: Option<String>,
    /// Leave the peer token Secret out (when it is managed elsewhere).
    pub without_secret: bool,
    /// IP family of the target cluster's pod addresses.
    pub ip_family: resources::IpFamily,
}

/// Parses every `CasseroleCache` document of a (multi-document) YAML stream.
pub fn parse_caches(
    input: &str,
    namespace: Option<&str>,
) -> Result<Vec<CasseroleCache>, RenderError> {
    let mut caches = Vec::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(input).enumerate() {
        let value = serde_yaml::Value::deserialize(doc)
            .map_err(|source| RenderError::Parse { index, source })?;
        if value.is_null() {
            continue; // an empty document, e.g. a trailing `---`
        }
        let api_version = value.get("apiVersion").and_then(|v| v.as_str());
        let served =
            [crate::STORAGE_VERSION, crate::NEXT_VERSION].map(|v| format!("casserole.io/{v}"));
        if !served.iter().any(|v| Some(v.as_str()) == api_version)
            || value.get("kind").and_then(|v| v.as_str()) != Some("CasseroleCache")
        {
            return Err(RenderError::WrongKind { index });
        }
        let mut value = value;
        value["apiVersion"] = format!("casserole.io/{}", crate::STORAGE_VERSION).into();
        let mut cache: CasseroleCache =
            serde_yaml::from_value(value).map_err(|source| RenderError::Parse { index, source })?;
        if let Some(ns) = namespace {
            cache.metadata.namespace = Some(ns.to_string());
        } else if cache.metadata.namespace.is_none() {
            cache.metadata.namespace = Some(DEFAULT_NAMESPACE.to_string());
        }
        caches.push(cache);
    }
    Ok(caches)
}

/// The objects of every cache in `input`, in apply order.
pub fn render_objects(input: &str, opts: &RenderOptions) -> Result<Vec<Object>, RenderError> {
    if let Some(token) = &opts.peer_token {
        casserole_limits::check_peer_token(token.trim()).map_err(RenderError::PeerToken)?;
    }
    let mut out = Vec::new();
    for cache in parse_caches(input, opts.namespace.as_deref())? {
        let token = (!opts.without_secret).then(|| {
            opts.peer_token
                .clone()
                .unwrap_or_else(secret::generate_token)
        });
        let inputs = resources::Inputs {
            ip_family: opts.ip_family,
            peer_token_fingerprint: token
                .as_deref()
                .map(|t| secret::token_fingerprint(t.as_bytes())),
            ..resources::Inputs::default()
        };
        let objects =
            resources::desired_for(&cache, &inputs).map_err(|source| RenderError::Invalid {
                name: cache.name_any(),
                source,
            })?;
        if let Some(token) = token {
            out.push(Object::Secret(Box::new(secret::peer_token_secret(
                &cache, &token,
            ))));
        }
        out.extend(objects);
    }
    Ok(out)
}

/// The objects as a multi-document YAML stream.
pub fn render(input: &str, opts: &RenderOptions) -> Result<String, RenderError> {
    let docs: Vec<String> = render_objects(input, opts)?
        .iter()
        .map(|o| serde_yaml::to_string(&o.to_value()).expect("JSON values serialize as YAML"))
        .collect();
    Ok(docs.join("---\n"))
}
