//! The operator and the node agree: the command line the operator renders for every example
//! cache is one the node accepts, and it means what the spec says.

use std::collections::HashMap;
use std::path::Path;

use casserole_node::config::{Config, ConfigError};
use casserole_operator::render::{render_objects, RenderOptions};
use casserole_operator::resources::IpFamily;
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

/// The node's command line for the one cache workload rendered from `input`, with `$(VAR)`
/// expanded as the kubelet would and the token file pointing at `token_file`.
fn node_argv(input: &str, family: IpFamily, pod_ip: &str, token_file: &Path) -> Vec<String> {
    let opts = RenderOptions {
        ip_family: family,
        ..RenderOptions::default()
    };
    let objects: Vec<serde_json::Value> = render_objects(input, &opts)
        .unwrap_or_else(|e| panic!("render refused {input}: {e}"))
        .iter()
        .map(|o| o.to_value())
        .collect();
    let containers = node_containers(&objects);
    assert_eq!(containers.len(), 1, "one cache workload");
    let (args, env) = &containers[0];
    let values: HashMap<&str, &str> = [
        ("POD_IP", pod_ip),
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
            "{arg} references a variable the container lacks"
        );
        // The Secret is mounted in the pod; here the token comes from a local file.
        if let Some(rest) = arg.strip_prefix("--peer-token-file=") {
            assert!(rest.starts_with('/'), "{arg}");
            arg = format!("--peer-token-file={}", token_file.display());
        }
        argv.push(arg);
    }
    argv
}

fn node_config(argv: &[String]) -> Result<Config, String> {
    Config::try_parse_from(argv)
        .map_err(|e| e.to_string())?
        .finish(|_| None)
        .map_err(|e: ConfigError| e.to_string())
}

fn token_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "0123456789abcdef0123456789abcdef\n").unwrap();
    (dir, file)
}

#[test]
fn every_example_renders_a_node_command_line_the_node_accepts() {
    let (_dir, token_file) = token_file();
    for example in EXAMPLES {
        let path = format!("{}/../examples/{example}", env!("CARGO_MANIFEST_DIR"));
        let input = std::fs::read_to_string(&path).unwrap();
        let spec: serde_yaml::Value = serde_yaml::from_str(&input).unwrap();
        let argv = node_argv(&input, IpFamily::IPv4, "10.1.2.3", &token_file);
        let cfg = node_config(&argv)
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
        let ignored = spec["spec"]["routes"].as_sequence().map_or(0, |routes| {
            routes
                .iter()
                .map(|r| r["ignoreQueryParams"].as_sequence().map_or(0, Vec::len))
                .sum()
        });
        assert_eq!(cfg.ignore_query_params.len(), ignored, "{example}");
    }
}

fn cache_yaml(spec_lines: &str) -> String {
    format!(
        "apiVersion: casserole.io/v1alpha1\nkind: CasseroleCache\nmetadata: {{name: web, namespace: ns}}\nspec:\n  upstream: http://u.example\n{spec_lines}"
    )
}

/// The node, started with `--flag=value` on top of a valid command line, accepts it?
fn node_accepts(flag: &str, value: &str) -> bool {
    let (_dir, token_file) = token_file();
    let mut argv = node_argv(&cache_yaml(""), IpFamily::IPv4, "10.1.2.3", &token_file);
    argv.retain(|a| !a.starts_with(&format!("{flag}=")));
    argv.push(format!("{flag}={value}"));
    node_config(&argv).is_ok()
}

/// The operator renders the cache (its validation, without the apiserver's schema)?
fn operator_accepts(spec_lines: &str) -> bool {
    render_objects(&cache_yaml(spec_lines), &RenderOptions::default()).is_ok()
}

#[test]
fn operator_and_node_agree_on_every_limit_just_inside_and_just_outside() {
    use casserole_limits::{CHUNK_SIZE_MAX, CHUNK_SIZE_MIN};
    let chunk_cases = [
        (CHUNK_SIZE_MIN.to_string(), true),
        ((CHUNK_SIZE_MIN - 1).to_string(), false),
        (CHUNK_SIZE_MAX.to_string(), true),
        ((CHUNK_SIZE_MAX + 1).to_string(), false),
        ("64Ki".into(), true),
        ("64Mi".into(), true),
        ("128Mi".into(), false),
        ("+1Mi".into(), false),
        ("1e6".into(), false),
        ("1.5Mi".into(), true),
        ("1.0000001Mi".into(), false),
    ];
    for (value, ok) in chunk_cases {
        assert_eq!(
            node_accepts("--chunk-size", &value),
            ok,
            "node, chunk {value}"
        );
        assert_eq!(
            operator_accepts(&format!("  chunkSize: \"{value}\"\n")),
            ok,
            "operator, chunk {value}"
        );
    }
    let size_cases = [
        ("1", true),
        ("+1k", false),
        ("-1k", false),
        ("100m", false),
        ("1.5", false),
        ("7Ei", true),
        ("8Ei", false),
        ("2GiB", false),
    ];
    for (value, ok) in size_cases {
        assert_eq!(
            node_accepts("--max-memory-usage", value),
            ok,
            "node, size {value}"
        );
        assert_eq!(
            operator_accepts(&format!("  memory: {{maxUsage: \"{value}\"}}\n")),
            ok,
            "operator, size {value}"
        );
    }
    // Stricter on purpose: a zero memory tier is legal for the node, useless for a cache.
    assert!(node_accepts("--max-memory-usage", "0"));
    assert!(!operator_accepts("  memory: {maxUsage: \"0\"}\n"));
    // Regexes: commas survive (one flag per pattern); what fails to compile fails both.
    for (pattern, ok) in [("^/a{1,3}$", true), ("(unclosed", false), ("a{2,1}", false)] {
        assert_eq!(
            node_accepts("--pass-through", pattern),
            ok,
            "node, {pattern}"
        );
        assert_eq!(
            operator_accepts(&format!("  passThrough: ['{pattern}']\n")),
            ok,
            "operator, {pattern}"
        );
    }
    let (_dir, token_file) = token_file();
    let argv = node_argv(
        &cache_yaml("  passThrough: ['^/a{1,3}$', '\\.sig$']\n"),
        IpFamily::IPv4,
        "10.1.2.3",
        &token_file,
    );
    assert_eq!(
        node_config(&argv).unwrap().pass_through,
        ["^/a{1,3}$", "\\.sig$"]
    );
}

#[test]
fn generated_peer_tokens_are_long_enough_for_the_node() {
    let token = casserole_operator::resources::secret::generate_token();
    casserole_limits::check_peer_token(&token).unwrap();
}

#[test]
fn ipv6_pods_advertise_a_bracketed_peering_url() {
    let (_dir, token_file) = token_file();
    let argv = node_argv(
        &cache_yaml(""),
        IpFamily::IPv6,
        "fd00:10:244::5",
        &token_file,
    );
    let cfg = node_config(&argv).unwrap_or_else(|e| panic!("the node rejects {argv:?}: {e}"));
    assert_eq!(cfg.peering_address, "http://[fd00:10:244::5]:8000");
    // ...and listens on IPv6 (a pod has no IPv4 address to be reached at).
    for addr in [cfg.address, cfg.admin_address, cfg.peer_address] {
        assert!(addr.is_ipv6() && addr.ip().is_unspecified(), "{addr}");
    }
    // Unbracketed, the node would refuse it: the bracket is what makes it work.
    let unbracketed = node_argv(
        &cache_yaml(""),
        IpFamily::IPv4,
        "fd00:10:244::5",
        &token_file,
    );
    assert!(node_config(&unbracketed).is_err());
}

/// A cache with the given upstream and extra spec lines, named `name`.
fn cache_with(name: &str, upstream: &str, spec_lines: &str) -> String {
    format!(
        "apiVersion: casserole.io/v1alpha1\nkind: CasseroleCache\nmetadata: {{name: '{name}', namespace: ns}}\nspec:\n  upstream: '{upstream}'\n{spec_lines}"
    )
}

fn renders(input: &str) -> bool {
    render_objects(input, &RenderOptions::default()).is_ok()
}

/// Every rendered node flag starting with `prefix`, for the one cache in `input`.
fn rendered_flags(input: &str, prefix: &str) -> Vec<String> {
    let (_dir, token_file) = token_file();
    node_argv(input, IpFamily::IPv4, "10.1.2.3", &token_file)
        .into_iter()
        .filter(|a| a.starts_with(prefix))
        .collect()
}

#[test]
fn render_refuses_every_upstream_the_node_cannot_run() {
    let cases = [
        ("http://u.example", true),
        ("https://u.example:8443/base/", true),
        ("http://[fd00::1]:8080", true),
        ("https://user:pw@u.example/p", true),
        ("http://u.example?x=1", false),
        ("http://u.example/#top", false),
        ("http://u.example:99999", false),
        ("http://u.example:port", false),
        ("ftp://u.example", false),
        ("http://", false),
        ("http://a b", false),
    ];
    for (url, ok) in cases {
        let operator = renders(&cache_with("web", url, ""));
        assert_eq!(operator, ok, "operator, upstream {url}");
        // Whatever the operator renders, the node starts with (the operator may be stricter).
        if operator {
            assert!(node_accepts("--upstream", url), "node, upstream {url}");
        }
    }
}

#[test]
fn render_refuses_names_etcd_endpoints_and_tokens_the_cluster_cannot_run() {
    for name in ["my.cache", "1cache", "Web", "web-"] {
        assert!(!renders(&cache_with(name, "http://u", "")), "name {name}");
    }
    assert!(renders(&cache_with("web-2", "http://u", "")));
    // The node's etcd client has no TLS: an https endpoint is refused up front.
    let etcd = |e: &str| format!("  etcd: {{external: {{endpoints: ['{e}']}}}}\n");
    assert!(!renders(&cache_with(
        "web",
        "http://u",
        &etcd("https://etcd:2379")
    )));
    let ok = cache_with("web", "http://u", &etcd("http://etcd.infra.svc:2379"));
    assert!(renders(&ok));
    let (_dir, token_file) = token_file();
    let argv = node_argv(&ok, IpFamily::IPv4, "10.1.2.3", &token_file);
    assert_eq!(
        node_config(&argv).unwrap().etcd,
        ["http://etcd.infra.svc:2379"]
    );
    // A peer token the node would refuse is refused by render too.
    let short = RenderOptions {
        peer_token: Some("short".into()),
        ..RenderOptions::default()
    };
    assert!(render_objects(&cache_yaml(""), &short).is_err());
}

#[test]
fn routes_and_ttl_rules_render_flags_the_shared_parsers_accept() {
    let spec = "  routes: [{prefix: /models/, url: 'http://hub.ml:8080/base'}]\n  ttlRules: [{pattern: 'a=b\\.iso$', ttl: 1h}]\n";
    let input = cache_with("web", "http://u", spec);
    let routes = rendered_flags(&input, "--route=");
    assert_eq!(routes, ["--route=/models/=http://hub.ml:8080/base"]);
    let route = casserole_limits::parse_route(routes[0].strip_prefix("--route=").unwrap());
    assert_eq!(route.unwrap().url, "http://hub.ml:8080/base");
    let rules = rendered_flags(&input, "--ttl-rule=");
    let rule = casserole_limits::parse_ttl_rule(rules[0].strip_prefix("--ttl-rule=").unwrap());
    assert_eq!(rule.unwrap().ttl.as_secs(), 3600);
    // What the parsers refuse, render refuses.
    for bad in [
        "  routes: [{prefix: /m/, url: 'http://hub?x=1'}]\n",
        "  routes: [{prefix: m/, url: 'http://hub'}]\n",
        "  routes: [{prefix: /m/, url: 'http://a'}, {prefix: /m/, url: 'http://b'}]\n",
        "  ttlRules: [{pattern: '(', ttl: 1h}]\n",
        "  ttlRules: [{pattern: '^/x', ttl: 1d}]\n",
    ] {
        assert!(!renders(&cache_with("web", "http://u", bad)), "{bad}");
    }
    // Once the node has the flags, it must accept what the operator renders.
    let (_dir, token_file) = token_file();
    let argv = node_argv(&input, IpFamily::IPv4, "10.1.2.3", &token_file);
    if let Err(e) = node_config(&argv) {
        assert!(
            e.contains("unexpected argument '--route'")
                || e.contains("unexpected argument '--ttl-rule'"),
            "the node refuses the rendered routes/ttl rules: {e}"
        );
    }
}

#[test]
fn a_rotation_renders_the_previous_token_file_the_node_reads() {
    let dir = tempfile::tempdir().unwrap();
    let (current, previous) = (dir.path().join("token"), dir.path().join("previous"));
    std::fs::write(&current, "current-token-0123456789").unwrap();
    std::fs::write(&previous, "previous-token-0123456789").unwrap();
    let mut argv = node_argv(&cache_yaml(""), IpFamily::IPv4, "10.1.2.3", &current);
    argv.push(format!("--peer-token-previous-file={}", previous.display()));
    let cfg = node_config(&argv).unwrap();
    assert_eq!(
        cfg.peer_token_previous.as_deref(),
        Some("previous-token-0123456789")
    );
    // The operator renders exactly that flag (its value is the pod's mount path) when the
    // Secret holds a `previous` key.
    let cache = casserole_operator::render::parse_caches(&cache_yaml(""), None).unwrap();
    let inputs = casserole_operator::resources::Inputs {
        peer_token_previous: true,
        ..Default::default()
    };
    let objects = casserole_operator::resources::desired_for(&cache[0], &inputs).unwrap();
    let rendered = serde_json::to_string(&objects.last().unwrap().to_value()).unwrap();
    assert!(rendered.contains("--peer-token-previous-file=/etc/casserole/peer/previous"));
}
