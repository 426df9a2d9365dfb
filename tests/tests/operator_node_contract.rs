//! The operator and the node agree: the command line the operator renders for every example
//! cache is one the node accepts, and it means what the spec says.

use std::collections::HashMap;

use casserole_node::config::Config;
use casserole_operator::render::{render_objects, RenderOptions};
use clap::Parser;

const EXAMPLES: &[&str] = &[
    "basic.yaml",
    "full.yaml",
    "daemonset-node-local.yaml",
    "memory-only.yaml",
];

/// Containers running the cache node, with their args and downward-API environment names.
fn node_containers(objects: &[serde_json::Value]) -> Vec<(Vec<String>, Vec<String>)> {
    let mut found = vec![];
    for o in objects {
        let kind = o["kind"].as_str().unwrap_or("");
        if kind != "StatefulSet" && kind != "DaemonSet" {
            continue;
        }
        for c in o["spec"]["template"]["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if !c["image"].as_str().unwrap_or("").contains("casserole-node") {
                continue;
            }
            let args = c["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect();
            let env = c["env"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| e["name"].as_str().unwrap().to_string())
                .collect();
            found.push((args, env));
        }
    }
    found
}

#[test]
fn every_example_renders_a_node_command_line_the_node_accepts() {
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("token");
    std::fs::write(&token_file, "0123456789abcdef0123456789abcdef\n").unwrap();
    for example in EXAMPLES {
        let path = format!("{}/../examples/{example}", env!("CARGO_MANIFEST_DIR"));
        let input = std::fs::read_to_string(&path).unwrap();
        let spec: serde_yaml::Value = serde_yaml::from_str(&input).unwrap();
        let objects: Vec<serde_json::Value> = render_objects(&input, &RenderOptions::default())
            .unwrap()
            .iter()
            .map(|o| o.to_value())
            .collect();
        let containers = node_containers(&objects);
        assert_eq!(containers.len(), 1, "{example}: one cache workload");
        let (args, env) = &containers[0];
        // The kubelet expands $(VAR) from the container's environment.
        let values: HashMap<&str, &str> = [
            ("POD_IP", "10.1.2.3"),
            ("POD_NAME", "cache-0"),
            ("POD_NAMESPACE", "ns"),
        ]
        .into();
        let mut argv = vec!["casserole-node".to_string()];
        for arg in args {
            let mut arg = arg.clone();
            for var in env {
                if let Some(v) = values.get(var.as_str()) {
                    arg = arg.replace(&format!("$({var})"), v);
                }
            }
            assert!(
                !arg.contains("$("),
                "{example}: {arg} references a variable the container lacks"
            );
            // The Secret is mounted in the pod; here the token comes from a local file.
            if let Some(rest) = arg.strip_prefix("--peer-token-file=") {
                assert!(rest.starts_with('/'), "{example}: {arg}");
                arg = format!("--peer-token-file={}", token_file.display());
            }
            argv.push(arg);
        }
        let cfg = Config::try_parse_from(&argv)
            .unwrap_or_else(|e| panic!("{example}: the node rejects {argv:?}: {e}"))
            .finish(|_| None)
            .unwrap_or_else(|e| panic!("{example}: the node rejects {argv:?}: {e}"));
        let upstream = spec["spec"]["upstream"].as_str().unwrap();
        assert_eq!(
            cfg.upstream().as_str().trim_end_matches('/'),
            upstream.trim_end_matches('/'),
            "{example}"
        );
        assert!(cfg.clustered(), "{example}: pods share chunks through etcd");
        assert_eq!(cfg.peering_address, "http://10.1.2.3:8000", "{example}");
        assert_eq!(cfg.node_id(), "cache-0", "{example}");
        assert_eq!(cfg.address.port(), 8080, "{example}");
        assert_eq!(cfg.admin_address.port(), 9090, "{example}");
        assert!(
            cfg.address.ip().is_unspecified(),
            "{example}: pods listen on all interfaces"
        );
        if let Some(ttl) = spec["spec"]["minTtlSeconds"].as_u64() {
            assert_eq!(cfg.min_ttl.as_secs(), ttl, "{example}");
        }
        if let Some(false) = spec["spec"]["disk"]["enabled"].as_bool() {
            assert!(!cfg.disk_cache_enabled, "{example}");
        }
    }
}
