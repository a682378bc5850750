//! An edge is reachable only by the product service beside it: it binds loopback unless told
//! otherwise, and the deployment file never publishes it on a host port, keeps it on an
//! internal network and requires service tokens.

use tollgate_edge::config::Config;
use tollgate_settings::MapSource;

#[test]
fn by_default_the_edge_listens_on_loopback_only() {
    let cfg = Config::from_source(&MapSource::from_pairs([
        ("edge_token", "t"),
        (
            "trusted_keys",
            "k:0000000000000000000000000000000000000000000000000000000000000000",
        ),
    ]))
    .expect("config");
    assert!(cfg.listen_addr.ip().is_loopback(), "{}", cfg.listen_addr);
    assert!(cfg.tokens.service.is_empty() && cfg.tokens.operator.is_empty());
}

#[test]
fn tokens_too_short_to_be_secret_are_refused_at_start() {
    let err = Config::from_source(&MapSource::from_pairs([
        ("edge_token", "t"),
        (
            "trusted_keys",
            "k:0000000000000000000000000000000000000000000000000000000000000000",
        ),
        ("edge_service_tokens", "a-long-enough-token-1,short"),
    ]))
    .expect_err("short token");
    assert!(
        err.0.join("\n").contains("TOLLGATE_EDGE_SERVICE_TOKENS"),
        "{:?}",
        err.0
    );
}

/// The lines of one top-level service of docker-compose.yml.
fn service<'a>(compose: &'a str, name: &str) -> Vec<&'a str> {
    let header = format!("  {name}:");
    compose
        .lines()
        .skip_while(|l| *l != header)
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("    ") || l.starts_with("  #"))
        .collect()
}

#[test]
fn the_deployment_file_keeps_the_edge_off_host_ports_and_behind_service_tokens() {
    let compose = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docker-compose.yml"
    ))
    .expect("docker-compose.yml");
    let edge = service(&compose, "edge");
    assert!(!edge.is_empty(), "no edge service");
    assert!(
        !edge.iter().any(|l| l.trim_start().starts_with("ports:")),
        "the edge must not publish a host port:\n{}",
        edge.join("\n")
    );
    assert!(
        edge.iter()
            .any(|l| l.contains("TOLLGATE_EDGE_SERVICE_TOKENS=${TOLLGATE_EDGE_SERVICE_TOKENS:?")),
        "the edge must require service tokens"
    );
    assert!(
        edge.iter().any(|l| l.trim() == "- services"),
        "the edge must join the services network"
    );
    let networks: Vec<&str> = compose
        .lines()
        .skip_while(|l| *l != "networks:")
        .take_while(|l| !l.starts_with("volumes:"))
        .collect();
    let services_net = networks
        .iter()
        .position(|l| l.trim() == "services:")
        .expect("services network");
    assert_eq!(
        networks.get(services_net + 1).map(|l| l.trim()),
        Some("internal: true")
    );
    // The control plane is published on loopback only.
    let cp = service(&compose, "control-plane");
    assert!(
        cp.iter().any(|l| l.trim() == "- \"127.0.0.1:7700:7700\""),
        "{}",
        cp.join("\n")
    );
}
