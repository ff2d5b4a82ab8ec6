//! Parsing, defaults and validation of the proxy configuration.
use super::*;

#[test]
fn example_parses() {
    let c = Config::from_toml(EXAMPLE_CONFIG).unwrap();
    assert_eq!(c.upstream.len(), 1);
    assert_eq!(c.upstream[0].services, vec![ServiceId(1), ServiceId(2)]);
    assert_eq!(c.limits.max_in_flight, 256);
    assert_eq!(c.limits.out_queue_frames, 4096);
}

#[test]
fn single_service_and_numbers() {
    let c = Config::from_toml(
        "[[upstream]]\nservice = \"ucs\"\naddr = \"127.0.0.1:1\"\n[[upstream]]\nservice = 9\naddr = \"127.0.0.1:2\"\nlinks = 1",
    )
    .unwrap();
    assert_eq!(c.upstream[0].services, vec![ServiceId(2)]);
    assert_eq!(c.upstream[1].services, vec![ServiceId(9)]);
    assert_eq!(c.upstream[0].links, 2);
}

#[test]
fn rejects_bad() {
    assert!(Config::from_toml("bogus = 1").is_err());
    assert!(Config::from_toml("[limits]\nmax_frame = 10").is_err());
    assert!(Config::from_toml("[[upstream]]\nservice = \"nope\"\naddr = \"127.0.0.1:1\"").is_err());
    assert!(Config::from_toml("[[upstream]]\nservice = 0\naddr = \"127.0.0.1:1\"").is_err());
}

/// One upstream: the least a valid configuration has.
const UP: &str = "[[upstream]]\nservice = \"ixn\"\naddr = \"127.0.0.1:1\"\n";

#[test]
fn no_upstream_and_empty_clusters_are_refused() {
    let e = err("workers = 1\n");
    assert!(e.contains("no [[upstream]]"), "{e}");
    let e = err(&format!("[clusters.x]\nbalance = \"round_robin\"\n{UP}"));
    assert!(e.contains("cluster x: no instances"), "{e}");
}

fn err(toml: &str) -> String {
    match Config::from_toml(toml) {
        Ok(_) => panic!("accepted: {toml}"),
        Err(e) => e.to_string(),
    }
}

const TWO: &str = "[[upstream]]\nname = \"a\"\nservice = \"ixn\"\naddr = \"127.0.0.1:1\"\n[[upstream]]\nname = \"b\"\nservice = \"ixn\"\naddr = \"127.0.0.1:2\"\n";

#[test]
fn clusters_pairs_and_tenants() {
    let c = Config::from_toml(&format!(
        "[clusters.x]\nbalance = \"least_outstanding\"\n{}",
        TWO.replace("service =", "cluster = \"x\"\nservice =")
    ))
    .unwrap();
    assert_eq!(c.clusters["x"].balance, Balance::LeastOutstanding);
    assert_eq!(c.upstream[1].cluster, "x");
    assert!(err(&TWO.replace("name = \"b\"", "name = \"a\"")).contains("used twice"));
    assert!(
        err(&TWO.replacen("service =", "cluster = \"nope\"\nservice =", 1))
            .contains("not declared")
    );
    assert!(
        err(&format!(
            "[clusters.x]\n{}",
            TWO.replacen("service =", "cluster = \"x\"\nservice =", 1)
        ))
        .contains("one cluster per service")
    );
    let pair = TWO.replacen("service =", "backup = \"b\"\nservice =", 1);
    assert_eq!(
        Config::from_toml(&pair).unwrap().upstream[0]
            .backup
            .as_deref(),
        Some("b")
    );
    assert!(
        err(&TWO.replacen("service =", "backup = \"zz\"\nservice =", 1))
            .contains("not an upstream")
    );
    assert!(err(&TWO.replacen("service =", "backup = \"a\"\nservice =", 1)).contains("own backup"));
    let ucs = TWO.replace("\"ixn\"", "\"ucs\"");
    let t = Config::from_toml(&format!(
        "{ucs}[[tenant]]\nid = 1\nucs = \"a\"\n[[tenant]]\nid = 2\nucs = \"a\"\n"
    ))
    .unwrap();
    assert_eq!(t.tenant.len(), 2, "tenants may share an instance");
    assert!(
        err(&format!(
            "{ucs}[[tenant]]\nid = 1\nucs = \"a\"\n[[tenant]]\nid = 1\nucs = \"b\"\n"
        ))
        .contains("one [[tenant]] entry per tenant")
    );
    assert!(err(&format!("{TWO}[[tenant]]\nid = 1\nucs = \"a\"\n")).contains("does not serve ucs"));
    // Interaction pins: the instance must serve interactions; a route must name something.
    let t = Config::from_toml(&format!(
        "{TWO}[[tenant]]\nid = 1\ninteraction = \"a\"\n[[tenant]]\nid = 2\ninteraction = \"b\"\n"
    ))
    .unwrap();
    assert_eq!(t.tenant[1].interaction.as_deref(), Some("b"));
    assert!(
        err(&format!("{ucs}[[tenant]]\nid = 1\ninteraction = \"a\"\n"))
            .contains("does not serve interaction")
    );
    assert!(err(&format!("{TWO}[[tenant]]\nid = 1\n")).contains("names no instance"));
    assert!(
        err(&format!("{TWO}[[tenant]]\nid = 1\ninteraction = \"zz\"\n"))
            .contains("is not an upstream")
    );
}

#[test]
fn partitions_validate() {
    let base = "[[upstream]]\nname = \"s1\"\ncluster = \"sms\"\nservice = 5\naddr = \"127.0.0.1:1\"\n[[upstream]]\nname = \"s2\"\ncluster = \"sms\"\nservice = 5\naddr = \"127.0.0.1:2\"\n[clusters.sms]\npartition_key = \"phone\"\n";
    let ok = format!(
        "{base}partitions = [{{ instance = \"s1\", prefixes = [\"0\",\"1\",\"2\",\"3\",\"4\"] }}, {{ instance = \"s2\", prefixes = [\"5\",\"6\",\"7\",\"8\",\"9\"] }}]\n"
    );
    // A tenant pin into a partitioned cluster would be ignored (it routes by key): refused.
    let pinned = format!("{ok}[[tenant]]\nid = 1\nucs = \"s1\"\n")
        .replace("service = 5", "service = \"ucs\"");
    assert!(err(&pinned).contains("not by tenant"), "{}", err(&pinned));
    let c = Config::from_toml(&ok).unwrap();
    assert_eq!(c.clusters["sms"].partitions.len(), 2);
    assert_eq!(c.clusters["sms"].key_space, "0123456789");
    let gap = ok
        .replace("\"4\"]", "\"3\"]")
        .replace("\"3\",\"3\"", "\"3\"");
    let e = err(&gap);
    assert!(e.contains("gaps") && e.contains("\"4\""), "{e}");
    let overlap = ok.replace("[\"5\"", "[\"4\",\"5\"");
    let e = err(&overlap);
    assert!(e.contains("\"4\"") && e.contains("overlap"), "{e}");
    let e = err(&ok.replace("partition_key = \"phone\"\n", ""));
    assert!(e.contains("partition_key"), "{e}");
    let e = err(&ok.replace("instance = \"s2\"", "instance = \"s9\""));
    assert!(e.contains("not an upstream"), "{e}");
}

#[test]
fn capabilities_validate() {
    let base = "[[upstream]]\nname = \"r1\"\ncluster = \"urs\"\ncapabilities = [\"sales\"]\nservice = \"ixn\"\naddr = \"127.0.0.1:1\"\n[clusters.urs]\ncapability_key = \"queue\"\n";
    let c = Config::from_toml(base).unwrap();
    assert_eq!(c.clusters["urs"].capability_types, vec![0x20]);
    assert_eq!(c.upstream[0].capabilities, vec!["sales".to_string()]);
    let e = err(&base.replace("capability_key = \"queue\"\n", ""));
    assert!(e.contains("capabilities need"), "{e}");
    let e = err(&format!("{base}capability_types = []\n"));
    assert!(e.contains("empty"), "{e}");
}

#[test]
fn tls_and_quic_validate() {
    assert!(
        err("[quic]\n").contains("needs cert and key"),
        "quic without a certificate"
    );
    let e = err("[tls]\ncert = \"/nonexistent.crt\"\nkey = \"/nonexistent.key\"\n");
    assert!(
        e.contains("tls.cert") && e.contains("/nonexistent.crt"),
        "{e}"
    );
    let e = err("[quic]\ncert = \"/no.crt\"\nkey = \"/no.key\"\nmax_handshakes = 0\n");
    assert!(e.contains("max_handshakes"), "{e}");
    assert!(
        Config::from_toml("[tls]\ncert = \"a\"\n").is_err(),
        "key is required"
    );
    // The SIGHUP path checks settings only: bad certificate files are the worker's to
    // report (it keeps its previous certificate), not a reason to refuse the reload.
    let c: Config = toml::from_str(&format!(
        "{UP}[tls]\ncert = \"/nonexistent.crt\"\nkey = \"/nonexistent.key\"\n[quic]\n"
    ))
    .unwrap();
    c.validate_settings().unwrap();
    let e = c.check_cert_files().unwrap_err().to_string();
    assert!(e.contains("/nonexistent.crt"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.toml");
    std::fs::write(
        &p,
        format!("{UP}[tls]\ncert = \"/nonexistent.crt\"\nkey = \"/nonexistent.key\"\n"),
    )
    .unwrap();
    assert!(Config::load_settings(&p).unwrap().tls.is_some());
    assert!(Config::load(&p).is_err());
}

#[test]
fn override_parses() {
    let u = Upstream::parse_override("ixn,ucs=127.0.0.1:7100").unwrap();
    assert_eq!(u.services, vec![ServiceId(1), ServiceId(2)]);
    assert!(Upstream::parse_override("ixn").is_err());
}

#[test]
fn link_secret_is_hidden_and_weak_ones_are_named() {
    let c = Config::from_toml(&format!(
        "link_secret = \"a-secret-of-thirty-two-bytes-xyz\"\n{UP}"
    ))
    .unwrap();
    let d = format!("{c:?}");
    assert!(!d.contains("a-secret"), "{d}");
    assert!(d.contains("32 bytes"), "{d}");
    assert_eq!(c.weak_link_secret(), None);
    let short = Config::from_toml(&format!("link_secret = \"short\"\n{UP}")).unwrap();
    assert!(short.weak_link_secret().unwrap().contains("5 bytes"));
    let example = Config::from_toml(EXAMPLE_CONFIG).unwrap();
    assert!(example.weak_link_secret().unwrap().contains("published"));
    assert!(
        Config::default().weak_link_secret().is_some(),
        "no secret is weak"
    );
}

#[test]
fn driver_key_and_what_uring_refuses() {
    assert_eq!(Config::from_toml(UP).unwrap().worker.driver, Driver::Mio);
    let plain = format!("plaintext_links = true\n[worker]\ndriver = \"uring\"\n{UP}");
    let c = Config::from_toml(&plain);
    if cfg!(feature = "uring") {
        assert_eq!(c.unwrap().worker.driver, Driver::Uring);
    } else {
        let e = c.unwrap_err().to_string();
        assert!(e.contains("without the `uring` feature"), "{e}");
    }
    let e = err(&format!("[worker]\ndriver = \"epoll\"\n{UP}"));
    assert!(e.contains("unknown variant"), "{e}");
    let e = err(&format!(
        "[worker]\ndriver = \"uring\"\n[link_tls]\nca = \"ca.pem\"\n{UP}"
    ));
    assert!(e.contains("worker.driver") && e.contains("TLS"), "{e}");
    let e = err(&format!(
        "[worker]\ndriver = \"uring\"\n[quic]\ncert = \"c\"\nkey = \"k\"\n{UP}"
    ));
    assert!(e.contains("worker.driver") && e.contains("QUIC"), "{e}");
    assert_eq!("uring".parse::<Driver>(), Ok(Driver::Uring));
    assert!("io_uring".parse::<Driver>().is_err());
}
