//! CEL rules (`x-kubernetes-validations`) of the CRD that are built from the node's limits
//! (`casserole_limits`) or that guard spec changes a cluster cannot carry out (transition rules
//! on `oldSelf`). Attached to the schema with `#[schemars(transform = ...)]`.

use casserole_limits::{CHUNK_SIZE_MAX_QUANTITY, CHUNK_SIZE_MIN_QUANTITY};
use kube::core::{validate, Rule};
use schemars::Schema;

/// Longest cache name whose derived names all fit: `<name>-etcd` must leave room for the
/// StatefulSet's 11-character controller-revision suffix within a 63-character label, and
/// `<name>-etcd-peer` must be a valid Service name.
pub const MAX_NAME_LEN: usize = 42;

/// Suffixes a cache name may not end with: the objects of a cache `x` are named `x`, `x-peer`,
/// `x-etcd` and `x-etcd-peer`, so a second cache named `x-peer` or `x-etcd` would fight over
/// them. Refusing these suffixes makes every derived name unique per namespace.
pub const RESERVED_NAME_SUFFIXES: [&str; 2] = ["-etcd", "-peer"];

fn add(schema: &mut Schema, rule: &str, message: &str) {
    validate(schema, Rule::new(rule).message(message)).expect("a schema object takes rules");
}

/// The cache's name: short enough and not ending like another cache's derived names.
pub fn name_rule() -> Rule {
    let ends = RESERVED_NAME_SUFFIXES
        .iter()
        .map(|s| format!("!self.metadata.name.endsWith('{s}')"))
        .collect::<Vec<_>>()
        .join(" && ");
    Rule::new(format!(
        "size(self.metadata.name) <= {MAX_NAME_LEN} && self.metadata.name.matches('{}') && {ends}",
        casserole_limits::DNS1035_PATTERN
    ))
    .message(name_message().as_str())
}

pub fn name_message() -> String {
    format!(
        "metadata.name must be a DNS-1035 label (lower-case letters, digits and '-', starting with a letter: it names Services) of at most {MAX_NAME_LEN} characters, and must not end with {} (those are the names of another cache's objects)",
        RESERVED_NAME_SUFFIXES.join(" or ")
    )
}

/// Every size the node reads: a whole number of bytes above zero that fits in 63 bits (what
/// `casserole_limits::parse_size` accepts, given the shared pattern).
pub fn size(schema: &mut Schema) {
    add(
        schema,
        "quantity(self).isInteger() && quantity(self).isGreaterThan(quantity('0'))",
        "must be a whole number of bytes greater than zero",
    );
}

/// `chunkSize`: a size within the node's bounds.
pub fn chunk_size(schema: &mut Schema) {
    size(schema);
    add(
        schema,
        &format!(
            "!quantity(self).isLessThan(quantity('{CHUNK_SIZE_MIN_QUANTITY}')) && !quantity(self).isGreaterThan(quantity('{CHUNK_SIZE_MAX_QUANTITY}'))"
        ),
        &format!("chunkSize must be between {CHUNK_SIZE_MIN_QUANTITY} and {CHUNK_SIZE_MAX_QUANTITY}"),
    );
}

/// A managed etcd's membership and storage class are fixed at creation: new members would
/// bootstrap a second cluster beside the old one, and a claim's class cannot change. Its
/// storage may grow (the operator expands the claims where the class allows it), never shrink.
pub fn managed_etcd_transitions(schema: &mut Schema) {
    add(
        schema,
        "self.replicas == oldSelf.replicas",
        "etcd.managed.replicas cannot change after creation (the operator does not resize etcd membership): create a new cache instead",
    );
    add(
        schema,
        "!quantity(self.storage).isLessThan(quantity(oldSelf.storage))",
        "etcd.managed.storage cannot shrink (a volume can only grow)",
    );
    add(
        schema,
        "has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)",
        "etcd.managed.storageClassName cannot change after creation (a claim's class is immutable)",
    );
}

/// A StatefulSet cache keeps its volume claims: `disk.enabled` and `disk.storageClassName` are
/// fixed and `disk.size` may only grow while the workload stays a StatefulSet (the operator
/// expands the claims; a DaemonSet's ephemeral volumes are part of its pod template and may
/// change). A DaemonSet cache's `replicas` cannot change (it would be ignored).
pub fn spec_transitions(schema: &mut Schema) {
    // Not a silent no-op: `kubectl scale` of a DaemonSet cache is refused with the reason.
    add(
        schema,
        "self.workload != 'DaemonSet' || oldSelf.workload != 'DaemonSet' || self.replicas == oldSelf.replicas",
        "replicas has no effect on a DaemonSet cache (one pod per eligible node): choose the nodes with nodeSelector and tolerations",
    );
    let both_statefulsets = "self.workload != 'StatefulSet' || oldSelf.workload != 'StatefulSet'";
    let both_enabled = "!self.disk.enabled || !oldSelf.disk.enabled";
    let hint = "on a StatefulSet cache (its volume claims keep their class and never shrink): delete and recreate the cache, or switch workload";
    add(
        schema,
        &format!("{both_statefulsets} || self.disk.enabled == oldSelf.disk.enabled"),
        &format!("disk.enabled cannot change {hint}"),
    );
    add(
        schema,
        &format!("{both_statefulsets} || {both_enabled} || !quantity(self.disk.size).isLessThan(quantity(oldSelf.disk.size))"),
        &format!("disk.size cannot shrink {hint}"),
    );
    add(
        schema,
        &format!(
            "{both_statefulsets} || {both_enabled} || (has(self.disk.storageClassName) == has(oldSelf.disk.storageClassName) && (!has(self.disk.storageClassName) || self.disk.storageClassName == oldSelf.disk.storageClassName))"
        ),
        &format!("disk.storageClassName cannot change {hint}"),
    );
}
