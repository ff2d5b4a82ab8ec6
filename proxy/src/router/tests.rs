//! The router's instance states, pickers, standby pairs, partitions and tenant routes.
use super::*;
use crate::config::ServiceId;

fn up(services: &[u8], port: u16) -> Upstream {
    Upstream {
        name: format!("i{port}"),
        services: services.iter().map(|s| ServiceId(*s)).collect(),
        addr: ([127, 0, 0, 1], port).into(),
        links: 2,
        cluster: String::new(),
        capabilities: Vec::new(),
        backup: None,
        tls: None,
        ca: None,
        server_name: None,
        client_cert: None,
        client_key: None,
    }
}

fn rr() -> Balance {
    Balance::RoundRobin
}

fn none(_: usize) -> usize {
    0
}

#[test]
fn round_robin_and_sticky_instance() {
    let mut r = Router::default();
    r.add(up(&[1, 2], 1), vec![0, 1], rr());
    r.add(up(&[1], 2), vec![2, 3], rr());
    let all = |_| true;
    let a = r.pick(1, 1, &[], all, none).unwrap();
    let b = r.pick(1, 1, &[], all, none).unwrap();
    assert_ne!(r.instance_of(a), r.instance_of(b), "spread over instances");
    // A desktop bound to link 1 for service 1 reuses it for service 2 (same instance).
    assert_eq!(r.pick(2, 1, &[1], all, none).unwrap(), 1);
    assert_eq!(r.pick(9, 1, &[], all, none), Err(NoLink::NoRoute));
    assert_eq!(r.pick(2, 1, &[], |_| false, none), Err(NoLink::Unavailable));
    // Only link 3 up: always it.
    for _ in 0..3 {
        assert_eq!(r.pick(1, 1, &[], |l| l == 3, none).unwrap(), 3);
    }
}

#[test]
fn states_exclude_new_sessions() {
    let mut r = Router::default();
    r.add(up(&[1], 1), vec![0], rr());
    r.add(up(&[1], 2), vec![1], rr());
    let all = |_| true;
    // Unavailable (announced by the server): excluded.
    r.instances[0].running = false;
    assert_eq!(r.state(0, all), InstState::Unavailable);
    for _ in 0..4 {
        assert_eq!(r.pick(1, 1, &[], all, none).unwrap(), 1);
    }
    // Disabled by an operator: excluded; drained once no session is left.
    r.instances[0].running = true;
    r.instances[1].disabled = true;
    r.instances[1].sessions = 3;
    assert_eq!(r.state(1, all), InstState::Disabled);
    for _ in 0..4 {
        assert_eq!(r.pick(1, 1, &[], all, none).unwrap(), 0);
    }
    r.instances[1].sessions = 0;
    assert_eq!(r.state(1, all), InstState::Drained);
    // Stopped: no link up.
    assert_eq!(r.state(0, |l| l != 0), InstState::Stopped);
    assert_eq!(
        r.pick(1, 1, &[], |l| l != 0, none),
        Err(NoLink::NotAccepting)
    );
    assert_eq!(r.pick(1, 1, &[], |_| false, none), Err(NoLink::Unavailable));
    // Enabled again: back in the pool.
    r.instances[1].disabled = false;
    let picks: Vec<usize> = (0..4)
        .map(|_| r.pick(1, 1, &[], all, none).unwrap())
        .collect();
    assert!(picks.contains(&0) && picks.contains(&1), "{picks:?}");
    // Retired by reload: not routable when alone.
    r.instances[0].retired = true;
    r.instances[1].retired = true;
    assert_eq!(r.pick(1, 1, &[], all, none), Err(NoLink::NoRoute));
}

#[test]
fn least_outstanding_prefers_the_less_loaded() {
    let mut r = Router::with_seed(7);
    for k in 0..3u16 {
        r.add(
            up(&[1], k + 1),
            vec![usize::from(k)],
            Balance::LeastOutstanding,
        );
    }
    // Link 0 has 100 in flight, link 1 has 10, link 2 has 0.
    let load = |l: usize| [100, 10, 0][l];
    let mut hits = [0u32; 3];
    for _ in 0..300 {
        hits[r.pick(1, 1, &[], |_| true, load).unwrap()] += 1;
    }
    // With two choices the most loaded instance can never win a draw.
    assert_eq!(hits[0], 0, "{hits:?}");
    assert!(hits[2] > hits[1], "{hits:?}");
    // Equal loads: all instances get sessions.
    let mut hits = [0u32; 3];
    for _ in 0..300 {
        hits[r.pick(1, 1, &[], |_| true, none).unwrap()] += 1;
    }
    assert!(hits.iter().all(|h| *h > 30), "{hits:?}");
    // Inside an instance, the link with fewest in flight.
    let mut r = Router::with_seed(1);
    r.add(up(&[1], 1), vec![0, 1, 2], Balance::LeastOutstanding);
    assert_eq!(r.pick(1, 1, &[], |_| true, |l| [5, 1, 3][l]).unwrap(), 1);
}

#[test]
fn warm_standby_pair() {
    let mut r = Router::default();
    let mut p = up(&[1], 1);
    p.backup = Some("i2".into());
    r.add(p, vec![0], rr());
    r.add(up(&[1], 2), vec![1], rr());
    assert_eq!(r.instances[1].backup_of, Some(0));
    let all = |_| true;
    // Primary up: the backup gets nothing, even if it announces itself primary.
    assert_eq!(r.state(1, all), InstState::Backup);
    for _ in 0..4 {
        assert_eq!(r.pick(1, 1, &[], all, none).unwrap(), 0);
    }
    // Primary lost: new sessions go to the backup at once...
    let p_down = |l| l != 0;
    assert_eq!(r.state(0, p_down), InstState::Stopped);
    assert_eq!(r.state(1, p_down), InstState::Running);
    assert_eq!(r.pick(1, 1, &[], p_down, none).unwrap(), 1);
    // ... unless the backup is a standby still waiting (announces role backup).
    r.instances[1].primary = false;
    assert_eq!(r.pick(1, 1, &[], p_down, none), Err(NoLink::NotAccepting));
    // The old primary came back as a standby (role backup) and the backup took over.
    r.instances[1].primary = true;
    r.instances[0].primary = false;
    assert_eq!(r.state(0, all), InstState::Backup);
    assert_eq!(r.state(1, all), InstState::Running);
    assert_eq!(r.pick(1, 1, &[], all, none).unwrap(), 1);
}

#[test]
fn partitioned_sessions_and_owners() {
    let cfg = Config::from_toml(
        r#"
[clusters.sms]
partition_key = "phone"
partitions = [
  { instance = "s1", prefixes = ["0", "1", "2", "3", "4"] },
  { instance = "s2", prefixes = ["5", "6", "7", "8", "9"] },
]
[[upstream]]
name = "s1"
cluster = "sms"
service = 5
addr = "127.0.0.1:1"
links = 1
backup = "s1b"
[[upstream]]
name = "s1b"
cluster = "sms"
service = 5
addr = "127.0.0.1:2"
links = 1
[[upstream]]
name = "s2"
cluster = "sms"
service = 5
addr = "127.0.0.1:3"
links = 1
"#,
    )
    .unwrap();
    let mut r = Router::default();
    for (k, u) in cfg.upstream.iter().enumerate() {
        r.add(u.clone(), vec![k], rr());
    }
    r.set_partitions(&cfg);
    let all = |_| true;
    // A session on each owner (the backup only stands by).
    assert_eq!(r.pick_partitioned(5, &[], all, none).unwrap(), vec![0, 2]);
    assert_eq!(r.partitions[&5].table.lookup("0612"), Some(0));
    assert_eq!(r.partitions[&5].table.lookup("7"), Some(2));
    assert_eq!(r.partitions[&5].table.lookup(""), None);
    assert!(r.link_serves_owner(0, 0) && r.link_serves_owner(1, 0));
    assert!(!r.link_serves_owner(2, 0));
    // s1 stopped: its backup takes its partition.
    assert_eq!(
        r.pick_partitioned(5, &[], |l| l != 0, none).unwrap(),
        vec![1, 2]
    );
    // s2 stopped: only s1's partition gets a session.
    assert_eq!(
        r.pick_partitioned(5, &[], |l| l != 2, none).unwrap(),
        vec![0]
    );
    assert_eq!(
        r.pick_partitioned(5, &[], |_| false, none),
        Err(NoLink::Unavailable)
    );
    assert_eq!(r.pick_partitioned(1, &[], all, none), Err(NoLink::NoRoute));
}

#[test]
fn capability_round_robin() {
    let mut r = Router::default();
    for (k, caps) in [vec!["sales"], vec!["sales", "vip"], vec!["vip"]]
        .into_iter()
        .enumerate()
    {
        let mut u = up(&[1], k as u16 + 1);
        u.capabilities = caps.into_iter().map(String::from).collect();
        r.add(u, vec![k], rr());
    }
    let all = |_| true;
    // A session on every running instance.
    assert_eq!(r.pick_all(1, &[], all, none).unwrap(), vec![0, 1, 2]);
    assert_eq!(r.pick_all(1, &[], |l| l != 1, none).unwrap(), vec![0, 2]);
    let bound = [0, 1, 2];
    let picks: Vec<usize> = (0..4)
        .map(|_| r.pick_capable(1, "sales", &bound, all).unwrap())
        .collect();
    assert_eq!(picks, vec![0, 1, 0, 1], "round robin among advertisers");
    for _ in 0..3 {
        let l = r.pick_capable(1, "vip", &bound, all).unwrap();
        assert!(l == 1 || l == 2);
    }
    // Instance 1 died: its capability goes to the others that have it.
    for _ in 0..3 {
        assert_eq!(r.pick_capable(1, "vip", &bound, |l| l != 1).unwrap(), 2);
    }
    // Only bound links count (the desktop has no session on instance 2).
    assert_eq!(
        r.pick_capable(1, "vip", &[0], all),
        Err(NoLink::Unavailable)
    );
    assert_eq!(
        r.pick_capable(1, "nobody", &bound, all),
        Err(NoLink::NoRoute)
    );
    // Server announced unavailable: excluded.
    r.instances[0].running = false;
    assert_eq!(r.pick_capable(1, "sales", &bound, all).unwrap(), 1);
}

/// An Interaction Server partitioned by tenant: each instance serves only the tenants it
/// owns, so a tenant's interaction sessions go to its instance (or that instance's backup)
/// and nowhere else; the UCS map is separate.
#[test]
fn tenant_routing_pins_interaction_sessions() {
    const IXN: u8 = 1;
    let mut r = Router::default();
    r.add(up(&[IXN], 1), vec![0], rr());
    r.add(up(&[IXN], 2), vec![1], rr());
    r.add(up(&[UCS], 3), vec![2], rr());
    r.tenant_pins.insert((10, IXN), "i1".into());
    r.tenant_pins.insert((20, IXN), "i2".into());
    let all = |_| true;
    for _ in 0..4 {
        assert_eq!(r.pick(IXN, 10, &[], all, none).unwrap(), 0);
        assert_eq!(r.pick(IXN, 20, &[], all, none).unwrap(), 1);
        // UCS is not pinned for these tenants: balanced over the UCS instances.
        assert_eq!(r.pick(UCS, 10, &[], all, none).unwrap(), 2);
    }
    // The owner's link is down: refused, never balanced onto the other tenant's instance.
    assert_eq!(
        r.pick(IXN, 20, &[], |l| l != 1, none),
        Err(NoLink::Unavailable)
    );
    // A tenant without a pin is balanced over both.
    let picks: Vec<usize> = (0..4)
        .map(|_| r.pick(IXN, 30, &[], all, none).unwrap())
        .collect();
    assert!(picks.contains(&0) && picks.contains(&1), "{picks:?}");
}

#[test]
fn tenant_routing_never_crosses() {
    let mut r = Router::default();
    r.add(up(&[1], 1), vec![0], rr());
    r.add(up(&[2], 2), vec![1], rr());
    r.add(up(&[2], 3), vec![2], rr());
    r.tenant_pins.insert((10, UCS), "i2".into());
    r.tenant_pins.insert((20, UCS), "i3".into());
    let all = |_| true;
    for _ in 0..4 {
        assert_eq!(r.pick(UCS, 10, &[], all, none).unwrap(), 1);
        assert_eq!(r.pick(UCS, 20, &[], all, none).unwrap(), 2);
    }
    // The tenant's instance is down: no fallback to another tenant's instance.
    assert_eq!(
        r.pick(UCS, 10, &[], |l| l != 1, none),
        Err(NoLink::Unavailable)
    );
    // A prefer link on another tenant's instance is not reused.
    assert_eq!(r.pick(UCS, 10, &[2], all, none).unwrap(), 1);
    // Unmapped tenants are balanced over all UCS instances; other services ignore the map.
    let picks: Vec<usize> = (0..4)
        .map(|_| r.pick(UCS, 30, &[], all, none).unwrap())
        .collect();
    assert!(picks.contains(&1) && picks.contains(&2));
    assert_eq!(r.pick(1, 10, &[], all, none).unwrap(), 0);
}
