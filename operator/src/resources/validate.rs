//! Checks the schema cannot make, and the effective values derived from the spec.
//!
//! The schema (and its CEL rules) already rejects most bad input at admission time, but some
//! rules need real parsing (regexes, derived watermarks) and CEL may be unavailable on older
//! clusters, so everything the builders rely on is re-checked here and reported with the
//! field's path.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;

use super::common::{namespace, Inputs};
use super::names::etcd;
use crate::crd::{CasseroleCache, ManagedEtcd};
pub use crate::schema_rules::MAX_NAME_LEN;
use crate::schema_rules::{name_message, RESERVED_NAME_SUFFIXES};

/// A spec the operator refuses to act on; `field` is the JSON path of the culprit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidSpec {
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> InvalidSpec {
    InvalidSpec {
        field: field.into(),
        message: message.into(),
    }
}

/// The validated, effective configuration that the builders render.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// `None` when the disk tier is disabled.
    pub disk: Option<DiskPlan>,
    /// What the nodes pass to `--etcd`.
    pub etcd_endpoints: Vec<String>,
    /// Set when the operator runs etcd itself.
    pub managed_etcd: Option<ManagedEtcd>,
    /// Compute resources of the cache container: the spec's, with memory and CPU requests
    /// filled in where it sets none ([`node_resources`]).
    pub resources: ResourceRequirements,
    /// What the cluster and the token Secret say (not the spec).
    pub inputs: Inputs,
}

/// Disk tier sizes, with defaults resolved (strings as the node accepts them).
#[derive(Clone, Debug, PartialEq)]
pub struct DiskPlan {
    pub size: String,
    pub max_usage: String,
    pub cleaned_usage: String,
    pub storage_class_name: Option<String>,
}

/// A size as the node parses it (`casserole_limits::parse_size`), above zero.
fn positive_quantity(field: &str, value: &str) -> Result<u128, InvalidSpec> {
    match casserole_limits::parse_size(value) {
        Ok(0) => Err(invalid(field, "must be greater than zero")),
        Ok(n) => Ok(n.into()),
        Err(message) => Err(invalid(field, message)),
    }
}

/// A URL the node can fetch from, by the parser the node's flags are checked with.
fn http_url(field: &str, value: &str) -> Result<(), InvalidSpec> {
    casserole_limits::parse_http_url(value)
        .map(drop)
        .map_err(|message| invalid(field, message))
}

/// The name names Services (DNS-1035 labels) and every derived object.
fn check_name(name: &str) -> Result<(), InvalidSpec> {
    casserole_limits::check_dns1035_label(name, MAX_NAME_LEN)
        .map_err(|message| invalid("metadata.name", format!("{message}; {}", name_message())))?;
    if RESERVED_NAME_SUFFIXES.iter().any(|s| name.ends_with(s)) {
        return Err(invalid("metadata.name", name_message()));
    }
    Ok(())
}

/// `spec.routes` and `spec.ttlRules`, by the parsers of the node's `--route` and `--ttl-rule`.
fn check_rules(cache: &CasseroleCache) -> Result<(), InvalidSpec> {
    let spec = &cache.spec;
    casserole_limits::check_routes(
        spec.routes
            .iter()
            .map(|r| (r.prefix.as_str(), r.url.as_str())),
    )
    .map_err(|(i, message)| invalid(format!("spec.routes[{i}]"), message))?;
    check_ignored_params(cache)?;
    if spec.ttl_rules.len() > casserole_limits::TTL_RULES_MAX {
        return Err(invalid(
            "spec.ttlRules",
            format!("at most {} rules", casserole_limits::TTL_RULES_MAX),
        ));
    }
    for (i, rule) in spec.ttl_rules.iter().enumerate() {
        casserole_limits::ttl_rule(&rule.pattern, &rule.ttl)
            .map_err(|message| invalid(format!("spec.ttlRules[{i}]"), message))?;
    }
    Ok(())
}

/// `spec.ignoreQueryParams` and `spec.routes[].ignoreQueryParams`, by the parser of the node's
/// `--ignore-query-param`, at most `IGNORED_PARAMS_MAX` in all.
fn check_ignored_params(cache: &CasseroleCache) -> Result<(), InvalidSpec> {
    let spec = &cache.spec;
    let upstream = (
        "spec.ignoreQueryParams".to_string(),
        "/",
        &spec.ignore_query_params,
    );
    let routes = spec.routes.iter().enumerate().map(|(i, r)| {
        let field = format!("spec.routes[{i}].ignoreQueryParams");
        (field, r.prefix.as_str(), &r.ignore_query_params)
    });
    let mut count = 0;
    for (field, prefix, names) in std::iter::once(upstream).chain(routes) {
        for (j, name) in names.iter().enumerate() {
            count += 1;
            if count > casserole_limits::IGNORED_PARAMS_MAX {
                let max = casserole_limits::IGNORED_PARAMS_MAX;
                return Err(invalid(
                    field,
                    format!("at most {max} ignored query parameters in all"),
                ));
            }
            casserole_limits::ignored_param(prefix, name)
                .map_err(|message| invalid(format!("{field}[{j}]"), message))?;
        }
    }
    Ok(())
}

/// Validates the spec and resolves defaults that depend on other fields.
pub fn plan(cache: &CasseroleCache) -> Result<Plan, InvalidSpec> {
    let spec = &cache.spec;
    check_name(&cache.name_any())?;
    http_url("spec.upstream", &spec.upstream)?;
    check_rules(cache)?;
    // The node's own compiler, so what passes here compiles there.
    casserole_limits::compile_pass_through(&spec.pass_through)
        .map_err(|e| invalid(format!("spec.passThrough[{}]", e.index), e.message))?;
    let chunk = positive_quantity("spec.chunkSize", &spec.chunk_size)?;
    casserole_limits::check_chunk_size(chunk as u64)
        .map_err(|message| invalid("spec.chunkSize", message))?;
    let max_memory = positive_quantity("spec.memory.maxUsage", &spec.memory.max_usage)?;
    check_memory_limit(cache, max_memory)?;

    let disk = if spec.disk.enabled {
        Some(disk_plan(cache)?)
    } else {
        None
    };

    let (etcd_endpoints, managed_etcd) = match (&spec.etcd.managed, &spec.etcd.external) {
        (Some(managed), None) => {
            if managed.replicas != 1 && managed.replicas != 3 {
                return Err(invalid("spec.etcd.managed.replicas", "must be 1 or 3"));
            }
            positive_quantity("spec.etcd.managed.storage", &managed.storage)?;
            let endpoint = format!(
                "http://{}.{}.svc:{}",
                etcd::client_service_name(cache),
                namespace(cache),
                etcd::CLIENT_PORT
            );
            (vec![endpoint], Some(managed.clone()))
        }
        (None, Some(external)) => {
            if external.endpoints.is_empty() {
                return Err(invalid(
                    "spec.etcd.external.endpoints",
                    "needs at least one endpoint",
                ));
            }
            for (i, e) in external.endpoints.iter().enumerate() {
                casserole_limits::check_etcd_endpoint(e).map_err(|message| {
                    invalid(format!("spec.etcd.external.endpoints[{i}]"), message)
                })?;
            }
            (external.endpoints.clone(), None)
        }
        _ => {
            return Err(invalid(
                "spec.etcd",
                "exactly one of etcd.managed and etcd.external must be set",
            ))
        }
    };

    Ok(Plan {
        disk,
        etcd_endpoints,
        managed_etcd,
        resources: node_resources(cache, max_memory),
        inputs: Inputs::default(),
    })
}

/// What a node needs beyond its chunk cache (`--max-memory-usage`): code, connections, metadata
/// and allocator slack. The node's own memory tests hold it within this (README, "Limits").
const NODE_MEMORY_OVERHEAD: u128 = 64 << 20;

/// CPU a cache pod requests when the spec sets no CPU request.
pub const DEFAULT_CPU_REQUEST: &str = "100m";

/// The cache container's resources. Where the spec sets neither a memory request nor a memory
/// limit, both become `memory.maxUsage` plus the node's overhead (a pod the scheduler places
/// by what it really uses, and the last one evicted under memory pressure); where it sets no
/// CPU request, [`DEFAULT_CPU_REQUEST`] (no CPU limit: throttling a cache only slows clients).
/// What the spec sets is kept as it is.
pub fn node_resources(cache: &CasseroleCache, max_memory: u128) -> ResourceRequirements {
    let mut resources = cache.spec.resources.clone().unwrap_or_default();
    let has = |m: &Option<BTreeMap<String, Quantity>>, key: &str| {
        m.as_ref().is_some_and(|m| m.contains_key(key))
    };
    if !has(&resources.requests, "memory") && !has(&resources.limits, "memory") {
        let memory = Quantity((max_memory + NODE_MEMORY_OVERHEAD).to_string());
        resources
            .requests
            .get_or_insert_with(BTreeMap::new)
            .insert("memory".into(), memory.clone());
        resources
            .limits
            .get_or_insert_with(BTreeMap::new)
            .insert("memory".into(), memory);
    }
    if !has(&resources.requests, "cpu") && !has(&resources.limits, "cpu") {
        resources
            .requests
            .get_or_insert_with(BTreeMap::new)
            .insert("cpu".into(), Quantity(DEFAULT_CPU_REQUEST.into()));
    }
    resources
}

/// A memory limit below what the chunk cache may use would pass the schema and then get the pod
/// OOM-killed under load; refuse it up front. Limits spelled in forms the size grammar does not
/// read (milli-units, exponents) are left to Kubernetes.
fn check_memory_limit(cache: &CasseroleCache, max_memory: u128) -> Result<(), InvalidSpec> {
    let limit = cache
        .spec
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|limits| limits.get("memory"));
    let Some(limit) = limit else { return Ok(()) };
    let Ok(bytes) = casserole_limits::parse_size(&limit.0) else {
        return Ok(());
    };
    if u128::from(bytes) < max_memory + NODE_MEMORY_OVERHEAD {
        return Err(invalid(
            "spec.resources.limits.memory",
            format!(
                "{} is less than memory.maxUsage ({}) plus the 64Mi a node needs beyond its chunk cache: the pod would be OOM-killed under load",
                limit.0, cache.spec.memory.max_usage
            ),
        ));
    }
    Ok(())
}

/// Resolves the disk watermarks. Defaults are fractions of the level above (80% of the
/// volume, 75% of that) so a user who sets only `size` gets a consistent trio; a user who
/// sets one watermark can still end up inconsistent with a derived one, which only this
/// check (not CEL, which sees only the fields present) catches.
fn disk_plan(cache: &CasseroleCache) -> Result<DiskPlan, InvalidSpec> {
    let disk = &cache.spec.disk;
    let size = positive_quantity("spec.disk.size", &disk.size)?;
    let (max_str, max) = match &disk.max_usage {
        Some(s) => (s.clone(), positive_quantity("spec.disk.maxUsage", s)?),
        None => {
            let v = size / 10 * 8;
            (v.to_string(), v)
        }
    };
    let (cleaned_str, cleaned) = match &disk.cleaned_usage {
        Some(s) => (s.clone(), positive_quantity("spec.disk.cleanedUsage", s)?),
        None => {
            let v = max / 4 * 3;
            (v.to_string(), v)
        }
    };
    if max >= size {
        return Err(invalid(
            "spec.disk.maxUsage",
            format!("must be less than disk.size ({})", disk.size),
        ));
    }
    if cleaned >= max {
        return Err(invalid(
            "spec.disk.cleanedUsage",
            format!("must be less than disk.maxUsage ({max_str})"),
        ));
    }
    Ok(DiskPlan {
        size: disk.size.clone(),
        max_usage: max_str,
        cleaned_usage: cleaned_str,
        storage_class_name: disk.storage_class_name.clone(),
    })
}
