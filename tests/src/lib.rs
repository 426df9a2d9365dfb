//! Test infrastructure for Casserole: a generated-content test origin and a harness that runs
//! the real `casserole-node` (and `etcd`) as processes.

pub mod churn;
pub mod client;
pub mod ecosystem;
pub mod harness;
pub mod origin;
