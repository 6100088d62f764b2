//! Tests for config parsing and validation: every error class reports the right file,
//! line, column and field; secrets resolve from each source; shipped files validate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use super::*;
use crate::topology;

const CLUSTER: &str = r#"[cluster]
name = "demo"
topology = "star"
secret = "change-me-please-0123"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "test.toml", Path::new("."))
}

/// The error message for `text`, which must fail.
fn err(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// A cluster header with `topology` plus `rest`.
fn with_topology(topology: &str, rest: &str) -> String {
    format!(
        "[cluster]\nname = \"demo\"\ntopology = \"{topology}\"\nsecret = \"change-me-please-0123\"\n{rest}"
    )
}

fn node(name: &str, port: u16, extra: &str) -> String {
    format!("\n[[nodes]]\nname = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\n{extra}")
}

/// A valid star: master (line 6), w1 (line 12), w2 (line 17).
fn star_text() -> String {
    format!(
        "{CLUSTER}{}{}{}",
        node(
            "master",
            7100,
            "role = \"master\"\napi = \"127.0.0.1:8080\"\n"
        ),
        node("w1", 7101, "service = \"127.0.0.1:7201\"\n"),
        node("w2", 7102, "master = \"master\"\n"),
    )
}

#[test]
fn valid_star_parses_with_defaults() {
    let cfg = parse(&star_text()).unwrap();
    assert_eq!(cfg.source, "test.toml");
    assert_eq!(cfg.cluster.name, "demo");
    assert_eq!(cfg.cluster.topology, TopologyKind::Star);
    assert_eq!(cfg.cluster.secret.as_bytes(), b"change-me-please-0123");
    assert!(cfg.cluster.service_key.is_none());
    assert_eq!(cfg.cluster.heartbeat_interval, Duration::from_millis(1000));
    assert_eq!(cfg.cluster.failure_threshold, 5);
    assert_eq!(cfg.cluster.max_frame_bytes, 1_048_576);
    assert_eq!(cfg.cluster.handshake_timeout, Duration::from_millis(5000));
    assert_eq!(cfg.nodes.len(), 3);
    let master = cfg.node("master").unwrap();
    assert_eq!(master.role, Role::Master);
    assert_eq!(master.api, Some("127.0.0.1:8080".parse().unwrap()));
    let w1 = cfg.node("w1").unwrap();
    assert_eq!(w1.role, Role::Worker);
    assert_eq!(w1.service, Some("127.0.0.1:7201".parse().unwrap()));
    assert_eq!(cfg.node("w2").unwrap().master.as_deref(), Some("master"));
    assert!(cfg.node("w3").is_none());
    assert!(cfg.links.is_empty());
}

#[test]
fn every_field_parses() {
    let text = format!(
        "[cluster]\nname = \"full\"\ntopology = \"master-ring-slave\"\nsecret = \"change-me-please-0123\"\n\
         service_key = \"service-key-0123456789\"\nheartbeat_interval_ms = 500\nfailure_threshold = 3\n\
         max_frame_bytes = 2048\nhandshake_timeout_ms = 750\n{}{}{}",
        node("m1", 7400, "role = \"master\"\n"),
        node("m2", 7401, "role = \"master\"\n"),
        node(
            "w",
            7402,
            "role = \"worker\"\nservice = \"127.0.0.1:7500\"\nservice_socket = \"/tmp/w.sock\"\n\
             api = \"[::1]:8080\"\nmaster = \"m1\"\nfallback_masters = [\"m2\"]\n"
        ),
    );
    let cfg = parse(&text).unwrap();
    let c = &cfg.cluster;
    assert_eq!(
        c.service_key.as_ref().unwrap().as_bytes(),
        b"service-key-0123456789"
    );
    assert_eq!(c.heartbeat_interval, Duration::from_millis(500));
    assert_eq!(c.failure_threshold, 3);
    assert_eq!(c.max_frame_bytes, 2048);
    assert_eq!(c.handshake_timeout, Duration::from_millis(750));
    let w = cfg.node("w").unwrap();
    assert_eq!(w.service_socket.as_deref(), Some(Path::new("/tmp/w.sock")));
    assert_eq!(w.api, Some("[::1]:8080".parse().unwrap()));
    assert_eq!(w.fallback_masters, ["m2"]);
}

#[test]
fn secret_debug_is_redacted() {
    let cfg = parse(&star_text()).unwrap();
    let debug = format!("{cfg:?}");
    assert!(debug.contains("Secret(<redacted>)"));
    assert!(!debug.contains("change-me-please"));
    assert_eq!(
        format!("{:?}", Secret::new(b"x".to_vec())),
        "Secret(<redacted>)"
    );
}

#[test]
fn kinds_and_roles_round_trip_their_names() {
    for kind in TopologyKind::ALL {
        assert_eq!(TopologyKind::from_name(&kind.to_string()), Some(kind));
    }
    assert_eq!(
        TopologyKind::MasterRingSlave.to_string(),
        "master-ring-slave"
    );
    assert_eq!(TopologyKind::from_name("Star"), None);
    assert_eq!(Role::from_name("master"), Some(Role::Master));
    assert_eq!(Role::Worker.to_string(), "worker");
    assert_eq!(Role::default(), Role::Worker);
}

#[test]
fn for_test_and_node_new() {
    let listen: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let n = NodeConfig::new("a", Role::Master, listen);
    assert_eq!(
        (n.name.as_str(), n.role, n.listen),
        ("a", Role::Master, listen)
    );
    assert!(n.service.is_none() && n.service_socket.is_none() && n.api.is_none());
    assert!(n.master.is_none() && n.fallback_masters.is_empty() && n.parent.is_none());
    let cfg = Config::for_test(TopologyKind::Mesh, vec![n]);
    assert_eq!(cfg.cluster.name, "test");
    assert_eq!(cfg.cluster.secret.as_bytes(), b"test-secret-0123456789");
    assert_eq!(cfg.cluster.heartbeat_interval, Duration::from_millis(100));
    assert_eq!(cfg.cluster.failure_threshold, 5);
    assert_eq!(cfg.cluster.max_frame_bytes, 1 << 20);
    assert_eq!(cfg.cluster.handshake_timeout, Duration::from_secs(2));
    assert!(cfg.links.is_empty());
    assert!(cfg.node("a").is_some());
    assert!(
        cfg.admits("a") && !cfg.admits("b"),
        "admits the declared nodes only"
    );
}

// --- TOML-level errors -----------------------------------------------------------------

#[test]
fn unknown_cluster_field_names_it_and_lists_the_valid_ones() {
    let text = "[cluster]\nname = \"demo\"\ncolour = \"red\"\n";
    let e = err(text);
    assert!(
        e.starts_with(
            "test.toml:3:1: cluster.colour: unknown field; expected one of name, topology, secret, secret_env,"
        ),
        "{e}"
    );
    assert!(e.contains("handshake_timeout_ms"), "{e}");
}

#[test]
fn unknown_node_field_names_the_node_index() {
    let text = format!("{}  colour = 1\n", star_text());
    let e = err(&text);
    assert!(
        e.starts_with(
            "test.toml:21:3: nodes[2].colour: unknown field; expected one of name, role, listen,"
        ),
        "{e}"
    );
}

#[test]
fn unknown_top_level_table_and_link_field() {
    assert_eq!(
        err(&format!("{CLUSTER}[extras]\nx = 1\n")),
        "test.toml:5:2: extras: unknown field; expected one of cluster, nodes, links, pools"
    );
    let text = with_topology(
        "custom",
        &format!(
            "{}\n[[links]]\nfrom = \"a\"\nto = \"a\"\nvia = \"b\"\n",
            node("a", 1, "")
        ),
    );
    assert_eq!(
        err(&text),
        "test.toml:13:1: links[0].via: unknown field; expected from or to"
    );
}

#[test]
fn unknown_field_in_inline_table() {
    let text = "cluster = { name = \"demo\", shade = 1 }\n";
    assert!(
        err(text).starts_with("test.toml:1:28: cluster.shade: unknown field; expected one of name"),
        "{}",
        err(text)
    );
}

#[test]
fn missing_fields_name_the_table_and_field() {
    assert_eq!(
        err(&format!("{CLUSTER}\n[[nodes]]\nname = \"a\"\n")),
        "test.toml:6:1: nodes[0].listen: missing required field; expected `listen = ...` in this table"
    );
    assert_eq!(
        err("[[nodes]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n"),
        "test.toml:1:1: cluster: missing required field; expected `cluster = ...` in this table"
    );
    assert_eq!(
        err("[cluster]\nname = \"demo\"\nsecret = \"change-me-please-0123\"\n"),
        "test.toml:1:1: cluster.topology: missing required field; expected `topology = ...` in this table"
    );
}

#[test]
fn wrong_types_name_the_field_and_expected_type() {
    assert_eq!(
        err("[cluster]\nname = 5\n"),
        "test.toml:2:8: cluster.name: invalid type: integer `5`; expected a string"
    );
    assert_eq!(
        err(&format!("{CLUSTER}heartbeat_interval_ms = \"fast\"\n")),
        "test.toml:5:25: cluster.heartbeat_interval_ms: invalid type: string \"fast\"; expected an integer"
    );
    let text = format!("{}{}", star_text(), "fallback_masters = [\"a\", 3]\n");
    assert_eq!(
        err(&text),
        "test.toml:21:26: nodes[2].fallback_masters: invalid type: integer `3`; expected a string"
    );
}

#[test]
fn syntax_errors_report_line_and_column() {
    let e = err("[cluster]\nname = \"demo\nx = 1\n");
    assert!(
        e.starts_with("test.toml:2:13: cluster.name: invalid basic string"),
        "{e}"
    );
    assert!(e.contains("; expected "), "{e}");
    let e = err("[cluster]\nname = \"a\"\nname = \"b\"\n");
    assert!(
        e.starts_with("test.toml:3:1: cluster.name: duplicate key"),
        "{e}"
    );
    let e = err("[cluster\n");
    assert!(e.starts_with("test.toml:1:"), "{e}");
}

// --- values ------------------------------------------------------------------------------

#[test]
fn bad_address_names_field_and_format() {
    let text = format!("{CLUSTER}{}", node("a", 1, "api = \"localhost:8080\"\n"));
    assert_eq!(
        err(&text),
        "test.toml:9:7: nodes[0].api: invalid socket address \"localhost:8080\"; expected IP:PORT such as \"127.0.0.1:7100\" or \"[::1]:7100\" (host names are not resolved)"
    );
    let text = format!("{CLUSTER}\n[[nodes]]\nname = \"a\"\nlisten = \"127.0.0.1\"\n");
    assert!(err(&text).starts_with("test.toml:8:10: nodes[0].listen: invalid socket address"));
}

#[test]
fn bad_names_are_rejected() {
    for bad in ["", "has space", "ünï", &"x".repeat(65), "a/b"] {
        let text = format!(
            "{CLUSTER}\n[[nodes]]\nname = \"{bad}\"\nlisten = \"127.0.0.1:1\"\nrole = \"master\"\n"
        );
        let e = err(&text);
        assert!(
            e.starts_with("test.toml:7:8: nodes[0].name: invalid node name"),
            "{e}"
        );
        assert!(
            e.ends_with("expected 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' or '-'"),
            "{e}"
        );
    }
    let ok = format!(
        "{CLUSTER}\n[[nodes]]\nname = \"{}\"\nlisten = \"127.0.0.1:1\"\nrole = \"master\"\n",
        "a.B_9-".repeat(10) + "abcd"
    );
    parse(&ok).unwrap();
    let e = err("[cluster]\nname = \"my cluster\"\ntopology = \"mesh\"\nsecret = \"change-me-please-0123\"\n");
    assert!(
        e.starts_with("test.toml:2:8: cluster.name: invalid cluster name"),
        "{e}"
    );
}

#[test]
fn unknown_topology_and_role() {
    let e = err(
        "[cluster]\nname = \"d\"\ntopology = \"hypercube\"\nsecret = \"change-me-please-0123\"\n",
    );
    assert_eq!(
        e,
        "test.toml:3:12: cluster.topology: unknown topology \"hypercube\"; expected one of star, ring, master-ring-slave, mesh, tree, custom"
    );
    let text = format!("{CLUSTER}{}", node("a", 1, "role = \"boss\"\n"));
    assert_eq!(
        err(&text),
        "test.toml:9:8: nodes[0].role: unknown role \"boss\"; expected \"master\" or \"worker\""
    );
}

#[test]
fn numbers_out_of_range() {
    let cases = [
        ("heartbeat_interval_ms = 5", "5 is out of range; expected an integer from 10 to 60000 (default 1000)"),
        ("failure_threshold = 1", "1 is out of range; expected an integer from 2 to 100 (default 5)"),
        ("max_frame_bytes = 100000000", "100000000 is out of range; expected an integer from 1024 to 67108864 (default 1048576)"),
        ("handshake_timeout_ms = -1", "-1 is out of range; expected an integer from 10 to 60000 (default 5000)"),
    ];
    for (line, message) in cases {
        let text = format!("{CLUSTER}{line}\n{}", node("m", 1, "role = \"master\"\n"));
        let key = line.split(' ').next().unwrap();
        let column = line.find('=').unwrap() + 3;
        assert_eq!(
            err(&text),
            format!("test.toml:5:{column}: cluster.{key}: {message}")
        );
    }
    let text = format!(
        "{CLUSTER}heartbeat_interval_ms = 10\nfailure_threshold = 100\nmax_frame_bytes = 67108864\nhandshake_timeout_ms = 60000\n{}",
        node("m", 1, "role = \"master\"\n")
    );
    let cfg = parse(&text).unwrap();
    assert_eq!(cfg.cluster.max_frame_bytes, 64 << 20);
}

// --- secrets -----------------------------------------------------------------------------

fn secret_config(secret_lines: &str) -> String {
    format!(
        "[cluster]\nname = \"d\"\ntopology = \"mesh\"\n{secret_lines}\n{}",
        node("a", 1, "")
    )
}

#[test]
fn secret_is_required() {
    assert_eq!(
        err(&secret_config("")),
        "test.toml:1:1: cluster.secret: no cluster secret given; expected exactly one of secret, secret_env or secret_file in [cluster]"
    );
}

#[test]
fn two_secret_sources_conflict() {
    let e = err(&secret_config(
        "secret = \"change-me-please-0123\"\nsecret_env = \"X\"",
    ));
    assert_eq!(
        e,
        "test.toml:5:14: cluster.secret_env: conflicts with cluster.secret (line 4); expected at most one of secret, secret_env or secret_file"
    );
    let e = err(&secret_config(
        "secret = \"change-me-please-0123\"\nservice_key_env = \"A\"\nservice_key_file = \"b\"",
    ));
    assert!(e.starts_with("test.toml:6:20: cluster.service_key_file: conflicts with cluster.service_key_env (line 5)"), "{e}");
}

#[test]
fn short_secrets_are_rejected() {
    assert_eq!(
        err(&secret_config("secret = \"too-short\"")),
        "test.toml:4:10: cluster.secret: secret is too short (9 bytes); expected a secret of at least 16 bytes"
    );
    let e = err(&secret_config(
        "secret = \"change-me-please-0123\"\nservice_key = \"short\"",
    ));
    assert!(
        e.starts_with("test.toml:5:15: cluster.service_key: secret is too short (5 bytes)"),
        "{e}"
    );
    // Exactly 16 bytes is enough.
    parse(&secret_config("secret = \"0123456789abcdef\"")).unwrap();
}

#[test]
fn secret_from_environment() {
    let var = "NODECLOUD_CONFIG_TEST_SECRET_PRESENT";
    std::env::set_var(var, "from-the-environment-0123");
    let cfg = parse(&secret_config(&format!("secret_env = \"{var}\""))).unwrap();
    assert_eq!(cfg.cluster.secret.as_bytes(), b"from-the-environment-0123");
}

#[test]
fn missing_secret_env_var_names_it() {
    let var = "NODECLOUD_CONFIG_TEST_SECRET_SURELY_UNSET";
    assert_eq!(
        err(&secret_config(&format!("secret_env = \"{var}\""))),
        format!("test.toml:4:14: cluster.secret_env: environment variable {var} is not set; expected {var} to hold the secret (at least 16 bytes)")
    );
    for bad in ["", "A=B"] {
        let e = err(&secret_config(&format!("secret_env = \"{bad}\"")));
        assert!(
            e.contains("cluster.secret_env: invalid environment variable name"),
            "{e}"
        );
    }
    let e = err(&secret_config("secret_env = \"A\\u0000B\""));
    assert!(e.contains("invalid environment variable name"), "{e}");
}

#[test]
fn secret_from_file_is_relative_to_the_config_and_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    std::fs::write(
        dir.path().join("keys/cluster.key"),
        "file-secret-0123456789\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("keys/service.key"),
        "service-secret-0123456\r\n",
    )
    .unwrap();
    let text = secret_config(
        "secret_file = \"keys/cluster.key\"\nservice_key_file = \"keys/service.key\"",
    );
    let path = dir.path().join("cluster.toml");
    std::fs::write(&path, &text).unwrap();
    let cfg = Config::load(&path).unwrap();
    assert_eq!(cfg.cluster.secret.as_bytes(), b"file-secret-0123456789");
    assert_eq!(
        cfg.cluster.service_key.unwrap().as_bytes(),
        b"service-secret-0123456"
    );
    assert_eq!(cfg.source, path.display().to_string());
}

#[test]
fn unreadable_secret_file_is_an_error_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let e = Config::parse(
        &secret_config("secret_file = \"nope.key\""),
        "c.toml",
        dir.path(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("c.toml:4:15: cluster.secret_file: cannot read "),
        "{e}"
    );
    assert!(e.contains("nope.key"), "{e}");
    assert!(
        e.ends_with("; expected a regular file of at most 65536 bytes holding the secret"),
        "{e}"
    );
    // A secret file that holds only a newline is too short, not silently empty.
    std::fs::write(dir.path().join("empty.key"), "\n").unwrap();
    let e = Config::parse(
        &secret_config("secret_file = \"empty.key\""),
        "c.toml",
        dir.path(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("secret is too short (0 bytes)"), "{e}");
}

// --- nodes and references --------------------------------------------------------------

#[test]
fn no_nodes() {
    assert_eq!(
        err(CLUSTER),
        "test.toml:3:12: nodes: no nodes declared; expected at least one [[nodes]] table"
    );
}

#[test]
fn duplicate_names() {
    let text = format!("{}{}", star_text(), node("w1", 7103, ""));
    assert_eq!(
        err(&text),
        "test.toml:23:8: nodes[3].name: duplicate node name \"w1\" (first declared as nodes[1] on line 13); expected a unique name per node"
    );
}

#[test]
fn duplicate_addresses_across_listen_service_and_api() {
    let text = format!("{}{}", star_text(), node("w3", 7101, ""));
    assert_eq!(
        err(&text),
        "test.toml:24:10: nodes[3].listen: address 127.0.0.1:7101 is already used by nodes[1].listen (line 14); expected a distinct address for every listen, service, api and proxy endpoint (a node with advertise may share one with nodes on other machines)"
    );
    let text = format!(
        "{}{}",
        star_text(),
        node("w3", 7103, "api = \"127.0.0.1:7201\"\n")
    );
    assert!(
        err(&text).starts_with("test.toml:25:7: nodes[3].api: address 127.0.0.1:7201 is already used by nodes[1].service (line 15)"),
        "{}",
        err(&text)
    );
    // Port 0 means "any free port", so repeating it is fine.
    let text = format!(
        "{CLUSTER}{}{}",
        node("m", 0, "role = \"master\"\n"),
        node("w", 0, "")
    );
    parse(&text).unwrap();
}

#[test]
fn duplicate_service_socket() {
    let text = format!(
        "{CLUSTER}{}{}",
        node("m", 1, "role = \"master\"\nservice_socket = \"/tmp/s\"\n"),
        node("w", 2, "service_socket = \"/tmp/s\"\n")
    );
    assert!(err(&text).starts_with("test.toml:15:18: nodes[1].service_socket: socket path is already used by nodes[0].service_socket (line 10)"));
}

#[test]
fn unknown_master_is_reported_at_its_value() {
    let text = format!("{}{}", star_text(), node("w3", 7103, "master = \"m9\"\n"));
    assert_eq!(
        err(&text),
        "test.toml:25:10: nodes[3].master: unknown node \"m9\"; expected the name of a node declared in [[nodes]]"
    );
}

#[test]
fn unknown_parent_and_fallback() {
    let text = with_topology(
        "tree",
        &format!("{}{}", node("r", 1, ""), node("c", 2, "parent = \"x\"\n")),
    );
    assert_eq!(
        err(&text),
        "test.toml:13:10: nodes[1].parent: unknown node \"x\"; expected the name of a node declared in [[nodes]]"
    );
    let text = with_topology(
        "master-ring-slave",
        &format!(
            "{}{}",
            node("m", 1, "role = \"master\"\n"),
            node(
                "w",
                2,
                "master = \"m\"\nfallback_masters = [\"m\", \"zz\"]\n"
            )
        ),
    );
    assert!(err(&text)
        .starts_with("test.toml:15:26: nodes[1].fallback_masters[1]: unknown node \"zz\""));
}

#[test]
fn self_references() {
    let text = format!(
        "{CLUSTER}{}",
        node("m", 1, "role = \"master\"\nmaster = \"m\"\n")
    );
    assert_eq!(
        err(&text),
        "test.toml:10:10: nodes[0].master: node \"m\" names itself; expected the name of another node"
    );
    let text = with_topology("tree", &node("r", 1, "parent = \"r\"\n"));
    assert!(err(&text).starts_with("test.toml:9:10: nodes[0].parent: node \"r\" names itself"));
}

#[test]
fn fields_a_topology_ignores_are_rejected() {
    let text = with_topology(
        "ring",
        &format!("{}{}", node("a", 1, ""), node("b", 2, "parent = \"a\"\n")),
    );
    assert_eq!(
        err(&text),
        "test.toml:13:10: nodes[1].parent: not used by topology \"ring\"; expected parent only with topology tree"
    );
    let text = with_topology(
        "mesh",
        &format!("{}{}", node("a", 1, ""), node("b", 2, "master = \"a\"\n")),
    );
    assert!(err(&text).contains("nodes[1].master: not used by topology \"mesh\""));
    let text = format!(
        "{}{}",
        star_text(),
        node("w3", 7103, "fallback_masters = [\"master\"]\n")
    );
    assert!(err(&text)
        .starts_with("test.toml:25:21: nodes[3].fallback_masters: not used by topology \"star\""));
}

// --- links -------------------------------------------------------------------------------

fn custom_text(nodes: &[&str], links: &[(&str, &str)]) -> String {
    let mut text = with_topology("custom", "");
    for (i, n) in nodes.iter().enumerate() {
        text += &node(n, 7700 + i as u16, "");
    }
    for (from, to) in links {
        text += &format!("\n[[links]]\nfrom = \"{from}\"\nto = \"{to}\"\n");
    }
    text
}

#[test]
fn links_only_with_custom() {
    let text = format!("{}\n[[links]]\nfrom = \"w1\"\nto = \"w2\"\n", star_text());
    assert_eq!(
        err(&text),
        "test.toml:22:1: links[0]: [[links]] given with topology \"star\", which plans its own links; expected [[links]] only with topology = \"custom\""
    );
}

#[test]
fn custom_links_must_name_declared_distinct_nodes() {
    // Nodes a, b at lines 6 and 10; links start at line 14.
    assert_eq!(
        err(&custom_text(&["a", "b"], &[("a", "c")])),
        "test.toml:16:6: links[0].to: unknown node \"c\"; expected the name of a node declared in [[nodes]]"
    );
    assert_eq!(
        err(&custom_text(&["a", "b"], &[("a", "b"), ("b", "b")])),
        "test.toml:20:6: links[1].to: link from \"b\" to itself; expected two different nodes"
    );
}

#[test]
fn duplicate_links_in_either_direction() {
    assert_eq!(
        err(&custom_text(&["a", "b"], &[("a", "b"), ("a", "b")])),
        "test.toml:18:1: links[1]: \"a\" and \"b\" are already linked by links[0] (line 14); expected at most one link per pair of nodes, in either direction"
    );
    assert!(err(&custom_text(&["a", "b"], &[("a", "b"), ("b", "a")]))
        .starts_with("test.toml:18:1: links[1]: \"b\" and \"a\" are already linked by links[0]"));
}

#[test]
fn custom_requires_links_unless_single_node() {
    assert_eq!(
        err(&custom_text(&["a", "b"], &[])),
        "test.toml:3:12: links: custom topology without [[links]]; expected [[links]] tables (from = \"a\", to = \"b\") joining every node"
    );
    parse(&custom_text(&["solo"], &[])).unwrap();
}

#[test]
fn custom_graph_must_be_connected() {
    let text = custom_text(&["a", "b", "c", "d"], &[("a", "b"), ("c", "d")]);
    assert_eq!(
        err(&text),
        "test.toml:14:1: nodes[2]: node \"c\" cannot be reached from \"a\" over the planned links; expected a connected cluster (add [[links]] joining it to the others)"
    );
    let cfg = parse(&custom_text(&["a", "b", "c"], &[("a", "b"), ("c", "b")])).unwrap();
    assert_eq!(
        cfg.links,
        [
            LinkConfig {
                from: "a".into(),
                to: "b".into()
            },
            LinkConfig {
                from: "c".into(),
                to: "b".into()
            }
        ]
    );
}

// --- per-topology rules ----------------------------------------------------------------

#[test]
fn star_needs_exactly_one_master() {
    let text = format!("{CLUSTER}{}{}", node("a", 1, ""), node("b", 2, ""));
    assert_eq!(
        err(&text),
        "test.toml:3:12: cluster.topology: star topology without a master; expected exactly one node with role = \"master\""
    );
    let text = format!("{}{}", star_text(), node("m2", 7103, "role = \"master\"\n"));
    assert_eq!(
        err(&text),
        "test.toml:25:8: nodes[3].role: a second master (the first is \"master\"); expected exactly one master in a star; the other nodes are workers"
    );
}

#[test]
fn star_worker_master_must_be_the_master() {
    let text = format!("{}{}", star_text(), node("w3", 7103, "master = \"w1\"\n"));
    assert_eq!(
        err(&text),
        "test.toml:25:10: nodes[3].master: \"w1\" is not the star's master; expected no master field, or master = \"master\""
    );
    let text = format!(
        "{CLUSTER}{}{}",
        node("m", 1, "role = \"master\"\nmaster = \"w\"\n"),
        node("w", 2, "")
    );
    assert!(err(&text)
        .starts_with("test.toml:10:10: nodes[0].master: the star's master joins no other node"));
}

#[test]
fn ring_needs_two_nodes() {
    let text = with_topology("ring", &node("a", 1, ""));
    assert_eq!(
        err(&text),
        "test.toml:3:12: cluster.topology: a ring of 1 node; expected at least 2 nodes for topology \"ring\""
    );
    parse(&with_topology(
        "ring",
        &format!("{}{}", node("a", 1, ""), node("b", 2, "")),
    ))
    .unwrap();
}

#[test]
fn mesh_accepts_any_number_of_nodes() {
    parse(&with_topology("mesh", &node("a", 1, ""))).unwrap();
    let nodes: String = (0..10)
        .map(|i| node(&format!("n{i}"), 7000 + i, ""))
        .collect();
    assert_eq!(
        parse(&with_topology("mesh", &nodes)).unwrap().nodes.len(),
        10
    );
}

#[test]
fn tree_needs_one_root() {
    let text = with_topology(
        "tree",
        &format!(
            "{}{}{}",
            node("r1", 1, ""),
            node("c", 2, "parent = \"r1\"\n"),
            node("r2", 3, "")
        ),
    );
    assert_eq!(
        err(&text),
        "test.toml:15:1: nodes[2].parent: \"r2\" is a second root (no parent; the first root is \"r1\"); expected exactly one node without parent in a tree"
    );
}

#[test]
fn tree_cycle_is_named() {
    let text = with_topology(
        "tree",
        &format!(
            "{}{}{}{}",
            node("root", 1, ""),
            node("a", 2, "parent = \"c\"\n"),
            node("b", 3, "parent = \"a\"\n"),
            node("c", 4, "parent = \"b\"\n"),
        ),
    );
    assert_eq!(
        err(&text),
        "test.toml:13:10: nodes[1].parent: parent cycle a -> c -> b -> a; expected parents that lead to a single root"
    );
    // Without any root the cycle is still what gets reported.
    let text = with_topology(
        "tree",
        &format!(
            "{}{}",
            node("x", 1, "parent = \"y\"\n"),
            node("y", 2, "parent = \"x\"\n")
        ),
    );
    assert!(
        err(&text).contains("nodes[0].parent: parent cycle x -> y -> x"),
        "{}",
        err(&text)
    );
}

fn mrs_text(extra_nodes: &str) -> String {
    with_topology(
        "master-ring-slave",
        &format!(
            "{}{}{extra_nodes}",
            node("m1", 1, "role = \"master\"\n"),
            node("m2", 2, "role = \"master\"\n")
        ),
    )
}

#[test]
fn master_ring_slave_valid() {
    let cfg = parse(&mrs_text(&node(
        "w",
        3,
        "master = \"m1\"\nfallback_masters = [\"m2\"]\n",
    )))
    .unwrap();
    assert_eq!(topology::plan(&cfg).links.len(), 2);
}

#[test]
fn master_ring_slave_needs_a_master() {
    let text = with_topology("master-ring-slave", &node("w", 1, ""));
    assert!(err(&text).starts_with(
        "test.toml:3:12: cluster.topology: master-ring-slave topology without a master"
    ));
}

#[test]
fn master_ring_slave_worker_needs_a_master_that_is_a_master() {
    assert_eq!(
        err(&mrs_text(&node("w", 3, ""))),
        "test.toml:16:1: nodes[2].master: worker \"w\" has no master; expected master = the name of a node with role = \"master\""
    );
    let text = mrs_text(&format!(
        "{}{}",
        node("w", 3, "master = \"m1\"\n"),
        node("v", 4, "master = \"w\"\n")
    ));
    assert_eq!(
        err(&text),
        "test.toml:24:10: nodes[3].master: \"w\" is not a master; expected the name of a node with role = \"master\""
    );
}

#[test]
fn master_ring_slave_fallbacks() {
    let cases = [
        ("[\"m2\", \"w0\"]", "nodes[3].fallback_masters[1]: \"w0\" is not a master"),
        ("[\"m1\"]", "nodes[3].fallback_masters[0]: \"m1\" is already the primary master"),
        ("[\"m2\", \"m2\"]", "nodes[3].fallback_masters[1]: \"m2\" is listed twice; expected distinct fallback masters"),
    ];
    for (list, message) in cases {
        let text = mrs_text(&format!(
            "{}{}",
            node("w0", 3, "master = \"m1\"\n"),
            node(
                "w",
                4,
                &format!("master = \"m1\"\nfallback_masters = {list}\n")
            )
        ));
        let e = err(&text);
        assert!(e.starts_with("test.toml:25:"), "{e}");
        assert!(e.contains(message), "{e}");
    }
}

#[test]
fn master_ring_slave_masters_take_no_master_fields() {
    let text = with_topology(
        "master-ring-slave",
        &format!(
            "{}{}",
            node("m1", 1, "role = \"master\"\n"),
            node("m2", 2, "role = \"master\"\nmaster = \"m1\"\n")
        ),
    );
    assert_eq!(
        err(&text),
        "test.toml:15:10: nodes[1].master: set on a master, which joins the master ring instead; expected master only on workers"
    );
}

// --- files and robustness --------------------------------------------------------------

#[test]
fn load_reports_missing_file() {
    let e = Config::load(Path::new("/definitely/not/here.toml")).unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }));
    let e = e.to_string();
    assert!(
        e.starts_with("/definitely/not/here.toml: cannot read config file: "),
        "{e}"
    );
}

#[test]
fn error_details_are_structured() {
    let e = parse(&format!(
        "{}{}",
        star_text(),
        node("w3", 7103, "master = \"m9\"\n")
    ))
    .unwrap_err();
    let detail = e.detail().unwrap();
    assert!(matches!(e, ConfigError::Invalid(_)));
    assert_eq!(
        detail.at,
        Location {
            file: "test.toml".into(),
            line: Some(25),
            column: Some(10)
        }
    );
    assert_eq!(detail.field, "nodes[3].master");
    assert!(matches!(parse("x = ").unwrap_err(), ConfigError::Toml(_)));
}

#[test]
fn columns_count_characters_and_crlf_works() {
    let text = "[cluster]\r\nname = \"démo\" # é\r\nzz = 1\r\n";
    assert!(err(text).starts_with("test.toml:3:1: cluster.zz: unknown field"));
    let text = "cluster = { name = \"é\", zz = 1 }\n";
    assert!(
        err(text).starts_with("test.toml:1:25: cluster.zz: unknown field"),
        "{}",
        err(text)
    );
    assert_eq!(line_col("aé\nxyz", 5), (2, 2));
    assert_eq!(line_col("abc", 100), (1, 4));
    assert_eq!(line_col("", 0), (1, 1));
}

#[test]
fn truncated_and_garbage_input_never_panics() {
    let text = star_text() + "\n[[links]]\nfrom = \"w1\"\nto = \"w2\"\n";
    for end in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
        let _ = parse(&text[..end]);
    }
    for garbage in [
        "\u{0}",
        "[[",
        "]]",
        "[cluster]\n[cluster.x]\n",
        "nodes = 5",
        "nodes = [1]",
        "[a.b.c]\n[[a.b]]",
        "\u{feff}",
        "= = =",
        "[\"cluster\"]\nname = 1",
    ] {
        let _ = parse(garbage);
    }
}

#[test]
fn shipped_config_files_parse_and_validate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let cfg = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let stem = path.file_stem().unwrap().to_str().unwrap().to_owned();
        assert_eq!(cfg.cluster.topology.to_string(), stem, "{}", path.display());
        let plan = topology::plan(&cfg);
        let graph = plan.graph();
        assert_eq!(
            graph.reachable_from(&cfg.nodes[0].name).len(),
            cfg.nodes.len()
        );
        assert!(topology::describe(&cfg, &plan).lines().count() == cfg.nodes.len() + 1);
        seen.push((stem, cfg.nodes.len(), plan.links.len()));
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("custom".to_string(), 6, 7),
            ("master-ring-slave".into(), 9, 9),
            ("mesh".into(), 5, 10),
            ("ring".into(), 6, 6),
            ("star".into(), 4, 3),
            ("tree".into(), 7, 6),
        ]
    );
}

#[test]
fn toml_messages_use_toml_terms_and_find_the_field() {
    assert_eq!(
        err("nodes = 5"),
        "test.toml:1:9: nodes: invalid type: integer `5`; expected an array"
    );
    assert_eq!(
        err("nodes = [1]"),
        "test.toml:1:10: nodes: invalid type: integer `1`; expected a table"
    );
    assert_eq!(
        err("x = "),
        "test.toml:1:5: x: invalid TOML syntax; expected valid TOML for this value"
    );
    // A value inside a multi-line array is attributed to the array's key.
    let text = format!("{}fallback_masters = [\n  \"x\",\n  3,\n]\n", star_text());
    assert_eq!(
        err(&text),
        "test.toml:23:3: nodes[2].fallback_masters: invalid type: integer `3`; expected a string"
    );
    assert!(err("[cluster]\n[cluster.x]\n").starts_with("test.toml:2:10: cluster.x: unknown field"));
    let e = err("[cluster]\nheartbeat_interval_ms = 99999999999999999999999\n");
    assert!(
        e.starts_with("test.toml:2:25: cluster.heartbeat_interval_ms: "),
        "{e}"
    );
}

// --- listen and advertise ----------------------------------------------------------------

/// A node with a listen value written as is (the `node` helper writes 127.0.0.1:PORT).
fn node_at(name: &str, listen: &str, extra: &str) -> String {
    format!("\n[[nodes]]\nname = \"{name}\"\nlisten = \"{listen}\"\n{extra}")
}

#[test]
fn advertise_takes_a_host_name_ipv4_or_bracketed_ipv6_with_its_own_port() {
    let text = format!(
        "{CLUSTER}{}{}{}",
        node_at(
            "m",
            "0.0.0.0:7601",
            "role = \"master\"\nadvertise = \"M.Example.org:17601\"\n"
        ),
        node_at("w1", "[::]:7601", "advertise = \"10.77.0.2:7601\"\n"),
        node_at("w2", "10.77.0.3:7601", "advertise = \"[fd77::3]:7601\"\n"),
    );
    let cfg = parse(&text).unwrap();
    let shown: Vec<String> = cfg
        .nodes
        .iter()
        .map(|n| n.dial_address().to_string())
        .collect();
    assert_eq!(
        shown,
        ["m.example.org:17601", "10.77.0.2:7601", "[fd77::3]:7601"]
    );
    assert_eq!(cfg.nodes[0].listen, "0.0.0.0:7601".parse().unwrap());
    assert_eq!(
        cfg.nodes[0].advertise.as_ref().map(|a| a.host.clone()),
        Some(Host::Name("m.example.org".into()))
    );
    // Every wildcard has an advertise: nothing to warn about.
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
}

#[test]
fn without_advertise_peers_dial_listen_and_a_wildcard_at_loopback() {
    let text = format!(
        "{CLUSTER}{}{}",
        node_at("m", "127.0.0.1:7100", "role = \"master\"\n"),
        node_at("w", "[::]:7101", ""),
    );
    let cfg = parse(&text).unwrap();
    assert_eq!(cfg.nodes[0].dial_address().to_string(), "127.0.0.1:7100");
    assert_eq!(cfg.nodes[1].dial_address().to_string(), "[::1]:7101");
}

#[test]
fn a_wildcard_listen_without_advertise_loads_with_a_warning_at_its_line() {
    let text = format!(
        "{CLUSTER}{}{}",
        node_at("m", "0.0.0.0:7100", "role = \"master\"\n"),
        node_at("w", "127.0.0.1:7101", ""),
    );
    let cfg = parse(&text).unwrap();
    let warnings: Vec<String> = cfg.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "test.toml:8:10: nodes[0].listen: wildcard address 0.0.0.0:7100 without advertise: \
          peers will dial 127.0.0.1:7100, which reaches \"m\" only from its own machine; \
          add advertise = \"HOST:PORT\" with an address the other nodes can reach"
        ]
    );
}

#[test]
fn a_host_name_in_listen_is_refused_and_pointed_to_advertise() {
    let text = format!(
        "{CLUSTER}{}",
        node_at("m", "localhost:7100", "role = \"master\"\n")
    );
    assert_eq!(
        err(&text),
        "test.toml:8:10: nodes[0].listen: host name in \"localhost:7100\"; expected an IP \
         address to bind, such as \"0.0.0.0:7100\" (every interface), \"10.0.0.5:7100\" or \
         \"[::]:7100\"; put the host name peers dial in advertise"
    );
}

#[test]
fn a_bad_advertise_names_its_line_field_and_problem() {
    for (value, problem) in [
        ("::1:7100", "IPv6 address without brackets in \"::1:7100\""),
        (
            "0.0.0.0:7100",
            "wildcard address 0.0.0.0 in \"0.0.0.0:7100\", which peers cannot dial",
        ),
        ("node-1", "no port in \"node-1\""),
        (
            "node-1:0",
            "port 0 in \"node-1:0\", which peers cannot dial",
        ),
        ("bad_-name.:1", "invalid host name \"bad_-name.\""),
    ] {
        let extra = format!("role = \"master\"\nadvertise = \"{value}\"\n");
        let text = format!("{CLUSTER}{}", node("m", 7100, &extra));
        assert_eq!(
            err(&text),
            format!(
                "test.toml:10:13: nodes[0].advertise: {problem}; expected HOST:PORT peers can \
                 dial: a host name, an IPv4 address or a bracketed IPv6 address, such as \
                 \"node-1.example.org:7100\", \"10.0.0.5:7100\" or \"[fd00::5]:7100\""
            )
        );
    }
}

#[test]
fn two_nodes_advertising_one_address_is_an_error() {
    let text = format!(
        "{CLUSTER}{}{}",
        node_at(
            "m",
            "0.0.0.0:7100",
            "role = \"master\"\nadvertise = \"Box.example:7100\"\n"
        ),
        node_at("w", "0.0.0.0:7100", "advertise = \"box.example:7100\"\n"),
    );
    assert_eq!(
        err(&text),
        "test.toml:15:13: nodes[1].advertise: peers already dial box.example:7100 to reach \
         \"m\" (nodes[0].advertise, line 10); expected a distinct advertise address for every node"
    );
    // A node without advertise is dialled at its listen address: that counts too.
    let text = format!(
        "{CLUSTER}{}{}",
        node_at(
            "m",
            "127.0.0.1:7100",
            "role = \"master\"\nadvertise = \"127.0.0.1:7100\"\n"
        ),
        node_at("w", "127.0.0.1:7100", ""),
    );
    assert!(
        err(&text).starts_with(
            "test.toml:14:10: nodes[1].listen: peers already dial 127.0.0.1:7100 to reach \"m\" (nodes[0].advertise, line 10)"
        ),
        "{}",
        err(&text)
    );
}

#[test]
fn nodes_with_advertise_may_bind_the_same_wildcard_on_their_own_machines() {
    let text = format!(
        "{CLUSTER}{}{}",
        node_at(
            "m",
            "0.0.0.0:7601",
            "role = \"master\"\nadvertise = \"10.77.0.1:7601\"\n"
        ),
        node_at("w", "0.0.0.0:7601", "advertise = \"10.77.0.2:7601\"\n"),
    );
    parse(&text).unwrap();
    // Within one node the endpoints still have to differ.
    let text = format!(
        "{CLUSTER}{}",
        node_at(
            "m",
            "0.0.0.0:7601",
            "role = \"master\"\nadvertise = \"10.77.0.1:7601\"\nservice = \"127.0.0.1:7601\"\n"
        ),
    );
    assert!(
        err(&text).starts_with(
            "test.toml:11:11: nodes[0].service: address 127.0.0.1:7601 overlaps 0.0.0.0:7601 of nodes[0].listen (line 8)"
        ),
        "{}",
        err(&text)
    );
    // Without advertise, both are on this machine: a wildcard clashes with any address
    // of its family on the same port.
    let text = format!(
        "{CLUSTER}{}{}",
        node_at("m", "0.0.0.0:7601", "role = \"master\"\n"),
        node_at("w", "127.0.0.1:7601", ""),
    );
    assert!(
        err(&text).starts_with(
            "test.toml:13:10: nodes[1].listen: address 127.0.0.1:7601 overlaps 0.0.0.0:7601 of nodes[0].listen (line 8)"
        ),
        "{}",
        err(&text)
    );
}

#[test]
fn nodes_that_advertise_may_share_a_service_socket_path_on_their_own_machines() {
    let sock = "service_socket = \"/run/nodecloud/app.sock\"\n";
    let text = format!(
        "{CLUSTER}{}{}",
        node_at(
            "m",
            "0.0.0.0:7601",
            &format!("role = \"master\"\nadvertise = \"m.example:7601\"\n{sock}")
        ),
        node_at(
            "w",
            "0.0.0.0:7601",
            &format!("advertise = \"w.example:7601\"\n{sock}")
        ),
    );
    assert!(parse(&text).is_ok());
    // Without advertise they may share a machine: one path cannot serve both.
    let text = format!(
        "{CLUSTER}{}{}",
        node_at("m", "127.0.0.1:7100", &format!("role = \"master\"\n{sock}")),
        node_at("w", "127.0.0.1:7101", sock),
    );
    assert!(err(&text).contains("socket path is already used"));
}

#[test]
fn cluster_tls_resolves_paths_against_the_file_and_nodes_may_override_cert_and_key() {
    let text = format!(
        "{CLUSTER}\n[cluster.tls]\nca = \"pki/ca.pem\"\ncert = \"pki/node.pem\"\nkey = \"pki/node.key\"\n{}{}",
        node("master", 7100, "role = \"master\"\n"),
        node(
            "w1",
            7101,
            "tls_cert = \"/etc/w1.pem\"\ntls_key = \"/etc/w1.key\"\n"
        ),
    );
    let cfg = Config::parse(&text, "test.toml", Path::new("/srv/nc")).unwrap();
    let tls = cfg.cluster.tls.clone().unwrap();
    assert_eq!(tls.ca, Path::new("/srv/nc/pki/ca.pem"));
    assert_eq!(tls.cert.as_deref(), Some(Path::new("/srv/nc/pki/node.pem")));
    assert!(tls.service_tls, "service_tls defaults to true");
    let w1 = cfg.node("w1").unwrap();
    assert_eq!(w1.tls_cert.as_deref(), Some(Path::new("/etc/w1.pem")));
    let files = |n: &str| crate::tls::node_files(&cfg, cfg.node(n).unwrap()).unwrap();
    assert_eq!(files("master").1, Path::new("/srv/nc/pki/node.key"));
    assert_eq!(files("w1").1, Path::new("/etc/w1.key"));
    assert!(parse(&star_text()).unwrap().cluster.tls.is_none());
}

#[test]
fn tls_settings_without_their_table_or_a_certificate_are_refused() {
    let e = err(&format!(
        "{CLUSTER}{}",
        node("master", 7100, "role = \"master\"\ntls_cert = \"m.pem\"\n")
    ));
    assert!(e.contains("nodes[0].tls_cert"), "{e}");
    assert!(e.contains("without TLS configured"), "{e}");
    // A cluster CA but no certificate for w1: neither its own nor the cluster's.
    let e = err(&format!(
        "{CLUSTER}\n[cluster.tls]\nca = \"ca.pem\"\nservice_tls = false\n{}{}",
        node(
            "master",
            7100,
            "role = \"master\"\ntls_cert = \"m.pem\"\ntls_key = \"m.key\"\n"
        ),
        node("w1", 7101, "tls_key = \"w1.key\"\n"),
    ));
    assert!(e.contains("nodes[1].tls_cert"), "{e}");
    assert!(e.contains("has no TLS cert"), "{e}");
    let e = err(&format!(
        "{CLUSTER}\n[cluster.tls]\ncert = \"c.pem\"\n{}",
        node("master", 7100, "role = \"master\"\n")
    ));
    assert!(e.contains("ca"), "{e}");
}

#[test]
fn a_node_may_advertise_an_http_backend_and_serve_the_proxy() {
    let text = format!(
        "{CLUSTER}proxy_max_body_bytes = 1024\nproxy_max_requests = 8\n{}{}",
        node("m", 7100, "role = \"master\"\nproxy = \"127.0.0.1:8000\""),
        node("w", 7101, "http = \"web-1.example.org:9001\""),
    );
    let cfg = parse(&text).unwrap();
    assert_eq!(
        cfg.node("m").unwrap().proxy,
        Some("127.0.0.1:8000".parse().unwrap())
    );
    assert_eq!(
        cfg.node("w")
            .unwrap()
            .http
            .as_ref()
            .map(ToString::to_string),
        Some("web-1.example.org:9001".to_owned())
    );
    assert_eq!(cfg.cluster.proxy.max_body_bytes, 1024);
    assert_eq!(cfg.cluster.proxy.max_requests, 8);
    assert_eq!(
        cfg.cluster.proxy.response_timeout,
        ProxyConfig::default().response_timeout
    );
}

#[test]
fn a_bad_http_address_and_a_proxy_on_a_taken_address_are_errors() {
    let e = err(&format!(
        "{CLUSTER}{}",
        node("m", 7100, "http = \"no-port\"")
    ));
    assert!(
        e.contains("nodes[0].http") && e.contains("invalid backend address"),
        "{e}"
    );
    let e = err(&format!(
        "{CLUSTER}{}",
        node("m", 7100, "proxy = \"127.0.0.1:7100\"")
    ));
    assert!(
        e.contains("nodes[0].proxy") && e.contains("already used"),
        "{e}"
    );
    let e = err(&format!(
        "{CLUSTER}proxy_max_requests = 0\n{}",
        node("m", 7100, "")
    ));
    assert!(e.contains("cluster.proxy_max_requests"), "{e}");
}

// --- [[pools]] ---

fn pool(extra: &str) -> String {
    format!("\n[[pools]]\n{extra}")
}

#[test]
fn a_pool_admits_undeclared_names_with_its_prefix_and_nothing_else() {
    let text = format!(
        "{}{}",
        star_text(),
        pool("prefix = \"worker-\"\nmaster = \"master\"\nmax = 3\n")
    );
    let cfg = parse(&text).unwrap();
    assert_eq!(
        cfg.pools,
        vec![PoolConfig {
            prefix: "worker-".into(),
            hub: "master".into(),
            max: 3
        }]
    );
    assert_eq!(cfg.member_bound, 3 + 3);
    assert!(cfg.admits("w1"), "declared");
    assert!(cfg.admits("worker-17"));
    assert!(!cfg.admits("worker-"), "the prefix alone is no member name");
    assert!(!cfg.admits("intruder-1"));
    assert!(!cfg.admits("worker-bad name"), "names follow the name rule");
    assert_eq!(cfg.pool_of("w1"), None, "declared names belong to no pool");
    assert_eq!(
        cfg.cluster.forget_after,
        Duration::from_millis(10 * 5 * 1000),
        "default: 10 failure timeouts"
    );
}

#[test]
fn a_pool_in_a_tree_names_its_parent_and_forget_after_is_read() {
    let text = with_topology(
        "tree",
        &format!(
            "forget_after_ms = 2500\n{}{}{}",
            node("root", 7100, ""),
            node("mid", 7101, "parent = \"root\"\n"),
            pool("prefix = \"leaf-\"\nparent = \"mid\"\nmax = 10\n")
        ),
    );
    let cfg = parse(&text).unwrap();
    assert_eq!(cfg.pools.first().map(|p| p.hub.as_str()), Some("mid"));
    assert_eq!(cfg.cluster.forget_after, Duration::from_millis(2500));
}

#[test]
fn pool_errors_name_the_line_and_field() {
    let base = star_text(); // 20 lines; [[pools]] on line 22, its keys from 23
    let cases = [
        (
            "prefix = \"\"\nmaster = \"master\"\nmax = 1\n",
            "test.toml:23:10: pools[0].prefix: invalid pool prefix \"\"",
        ),
        (
            "prefix = \"w\"\nmaster = \"master\"\nmax = 1\n",
            "test.toml:23:10: pools[0].prefix: declared node \"w1\" starts with pool prefix \"w\"",
        ),
        (
            "prefix = \"x-\"\nmaster = \"nobody\"\nmax = 1\n",
            "test.toml:24:10: pools[0].master: unknown node \"nobody\"",
        ),
        (
            "prefix = \"x-\"\nmaster = \"w1\"\nmax = 1\n",
            "test.toml:24:10: pools[0].master: \"w1\" is not a master",
        ),
        (
            "prefix = \"x-\"\nmax = 1\n",
            "pools[0].master: no master or parent given",
        ),
        (
            "prefix = \"x-\"\nmaster = \"master\"\nmax = 0\n",
            "test.toml:25:7: pools[0].max: 0 is out of range; expected an integer from 1 to 10000",
        ),
        (
            "prefix = \"x-\"\nmaster = \"master\"\nmax = 10001\n",
            "pools[0].max: 10001 is out of range",
        ),
    ];
    for (pool_text, want) in cases {
        let text = format!("{base}{}", pool(pool_text));
        let got = err(&text);
        assert!(
            got.starts_with(want) || (got.contains(want) && !want.starts_with("test.toml")),
            "{got}\n  wanted: {want}"
        );
    }
    let overlapping = format!(
        "{base}{}{}",
        pool("prefix = \"x-\"\nmaster = \"master\"\nmax = 1\n"),
        pool("prefix = \"x-a\"\nmaster = \"master\"\nmax = 1\n")
    );
    assert!(
        err(&overlapping)
            .contains("pools[1].prefix: prefix \"x-a\" overlaps pools[0].prefix \"x-\""),
        "{}",
        err(&overlapping)
    );
}

#[test]
fn more_than_sixteen_pools_and_a_forget_time_out_of_range_are_refused() {
    let pools: String = (0..=MAX_POOLS)
        .map(|i| {
            pool(&format!(
                "prefix = \"p{i}x-\"\nmaster = \"master\"\nmax = 1\n"
            ))
        })
        .collect();
    let got = err(&format!("{}{pools}", star_text()));
    assert!(got.contains("more than 16 pools"), "{got}");
    let fewer: String = (0..MAX_POOLS)
        .map(|i| {
            pool(&format!(
                "prefix = \"p{i}x-\"\nmaster = \"master\"\nmax = 1\n"
            ))
        })
        .collect();
    assert_eq!(
        parse(&format!("{}{fewer}", star_text()))
            .unwrap()
            .pools
            .len(),
        MAX_POOLS
    );
    for bad in [99, 86_400_001] {
        let text = star_text().replacen(
            "secret = \"change-me-please-0123\"\n",
            &format!("secret = \"change-me-please-0123\"\nforget_after_ms = {bad}\n"),
            1,
        );
        let got = err(&text);
        assert!(got.contains("forget_after_ms"), "{got}");
        assert!(got.contains("out of range"), "{got}");
    }
}

#[test]
fn stats_interval_defaults_to_five_seconds_is_read_and_out_of_range_is_refused() {
    assert_eq!(
        parse(&star_text()).unwrap().cluster.stats_interval,
        Duration::from_secs(5)
    );
    let with = |ms: i64| {
        star_text().replacen(
            "secret = \"change-me-please-0123\"\n",
            &format!("secret = \"change-me-please-0123\"\nstats_interval_ms = {ms}\n"),
            1,
        )
    };
    assert_eq!(
        parse(&with(250)).unwrap().cluster.stats_interval,
        Duration::from_millis(250)
    );
    for bad in [9, 60_001] {
        let got = err(&with(bad));
        assert!(got.contains("stats_interval_ms"), "{got}");
        assert!(got.contains("out of range"), "{got}");
    }
}

#[test]
fn dial_from_takes_an_ip_address_and_refuses_a_port_a_wildcard_or_a_name() {
    let text = format!(
        "{CLUSTER}{}{}",
        node("m", 7100, "role = \"master\"\ndial_from = \"127.0.0.5\"\n"),
        node("w", 7101, "dial_from = \"::1\"\n"),
    );
    let cfg = parse(&text).unwrap();
    assert_eq!(cfg.nodes[0].dial_from, Some("127.0.0.5".parse().unwrap()));
    assert_eq!(cfg.nodes[1].dial_from, Some("::1".parse().unwrap()));
    for value in ["127.0.0.5:7100", "0.0.0.0", "::", "node-1", "224.0.0.1"] {
        let extra = format!("role = \"master\"\ndial_from = \"{value}\"\n");
        let text = format!("{CLUSTER}{}", node("m", 7100, &extra));
        let e = err(&text);
        assert!(
            e.contains("nodes[0].dial_from: invalid source address")
                && e.contains("an IP address of this machine, without a port"),
            "{value}: {e}"
        );
    }
}
