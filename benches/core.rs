//! criterion benchmark of the proxy core alone (no sockets, no kernel): the user-space cost of
//! one request's round trip through the proxy's rules, the figure that `loadgen compare`'s
//! "proxy CPU per request" adds kernel time to.
//!
//! One core, one upstream link answered by a minimal server inside the bench, 1,000 desktops
//! holding `WINDOW` echo requests in flight each. One iteration moves one batch: every
//! desktop's next `WINDOW` requests are read from its socket, forwarded, written to the link,
//! echoed by the server, read back from the link, and written to the desktops. Requests per
//! iteration are reported as `Throughput::Elements`, so criterion prints the time per request.
//!
//! Run: `cargo bench -p deskmux-benches --bench core -- --warm-up-time 2 --measurement-time 5`

use std::hint::black_box;
use std::io::IoSlice;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use deskmux_codec::msg::{DesktopHello, LinkHelloAck, Role, ServerHello, ServiceState, State};
use deskmux_codec::msg::{control, ixn, key};
use deskmux_codec::{Frame, FrameDecoder, Head, Kind, Service};
use deskmux_proxy::config::Config;
use deskmux_proxy::core::{Core, DesktopId, Endpoint, Io, LinkId};
use deskmux_proxy::metrics::Metrics;

const DESKTOPS: usize = 1000;

/// The bench's world: the core, its desktops' ids, the link, and a clock.
struct Rig {
    core: Core,
    now: Instant,
    desktops: Vec<DesktopId>,
    link: LinkId,
    server_rx: BytesMut,
    server_dec: FrameDecoder,
    reply: BytesMut,
    requests: Vec<Vec<u8>>,
}

fn config() -> Config {
    let mut c = Config::from_toml(
        "[limits]\nmax_desktops = 5000\nmax_desktops_per_source = 0\n[[upstream]]\nname = \"a\"\nservice = [\"interaction\", \"ucs\"]\naddr = \"127.0.0.1:1\"\nlinks = 1\n",
    )
    .expect("config");
    c.normalize();
    c
}

impl Rig {
    fn new(window: usize) -> Rig {
        let now = Instant::now();
        let metrics = Metrics::new(&mut prometheus_client::registry::Registry::default());
        let mut core = Core::new(0, &config(), now, 1, metrics);
        core.handle_timeout(now);
        let Some(Io::Connect { link, .. }) = core.poll_io() else {
            panic!("no connect")
        };
        core.link_connected(now, link);
        let mut rig = Rig {
            core,
            now,
            desktops: Vec::new(),
            link,
            server_rx: BytesMut::new(),
            server_dec: FrameDecoder::new(16 << 20),
            reply: BytesMut::new(),
            requests: Vec::new(),
        };
        rig.serve();
        let ip: IpAddr = [10, 0, 0, 1].into();
        for n in 0..DESKTOPS {
            let id = rig.core.accept(now, ip, true).expect("accept");
            let mut h = Head::new(Kind::Request, Service::Control, control::HELLO);
            h.tenant = 1 + (n % 3) as u32;
            h.correlation = 1;
            let hello = Frame::build(h, |w| {
                DesktopHello {
                    version: 1,
                    agent: "a",
                    token: "t",
                    reconnect: None,
                    services: 0b110,
                }
                .write(w)
            })
            .expect("hello");
            rig.core.desktop_data(now, id, hello.as_bytes());
            rig.desktops.push(id);
            // Its next `window` requests, as it would write them.
            let mut batch = Vec::new();
            for k in 0..window {
                let mut h = Head::new(Kind::Request, Service::Interaction, ixn::ECHO);
                h.tenant = 1 + (n % 3) as u32;
                h.correlation = 100 + k as u64;
                let f =
                    Frame::build(h, |w| w.bin(key::DATA, &[7u8; 16]).map(|_| ())).expect("echo");
                batch.extend_from_slice(f.as_bytes());
            }
            rig.requests.push(batch);
        }
        rig.serve();
        rig.deliver();
        rig
    }

    /// Write what the core queued for the link to the server, which answers at once; hand
    /// its answers back to the core.
    fn serve(&mut self) {
        loop {
            let mut moved = false;
            while let Some(ep) = self.core.poll_transmit() {
                match ep {
                    Endpoint::Link(l) => loop {
                        let mut iov = [IoSlice::new(&[]); 64];
                        let n = self.core.link_slices(l, &mut iov);
                        if n == 0 {
                            break;
                        }
                        let mut w = 0;
                        for s in &iov[..n] {
                            self.server_rx.extend_from_slice(s);
                            w += s.len();
                        }
                        self.core.link_written(self.now, l, w);
                        moved = true;
                    },
                    Endpoint::Desktop(d) => self.write_desktop(d),
                }
            }
            while let Some(f) = self
                .server_dec
                .next_frame(&mut self.server_rx)
                .expect("frame")
            {
                self.answer(&f);
            }
            if !self.reply.is_empty() {
                let r = self.reply.split().freeze();
                self.core.link_data(self.now, self.link, &r);
                moved = true;
            }
            if !moved {
                return;
            }
        }
    }

    /// The server's answer to one frame from the proxy.
    fn answer(&mut self, f: &Frame) {
        let h = *f.head();
        let mut r = h;
        r.kind = Kind::Response;
        let out = match (h.kind, h.msg_type, h.service) {
            (Kind::Request, control::LINK_HELLO, Service::Control) => Frame::build(r, |w| {
                LinkHelloAck {
                    max_frame: 1 << 21,
                    heartbeat_ms: 60_000,
                    state: ServiceState {
                        state: State::Running,
                        role: Role::Primary,
                        instance: "a",
                    },
                }
                .write(w)
            })
            .expect("ack"),
            (Kind::Request, control::SESSION_OPEN, Service::Control) => Frame::build(r, |w| {
                ServerHello {
                    session: h.session,
                    max_frame: 1 << 21,
                    heartbeat_ms: 60_000,
                    max_in_flight: 256,
                }
                .write(w)
            })
            .expect("hello"),
            (Kind::Request, _, Service::Interaction) => {
                Frame::with_body(r, f.body_bytes()).expect("echo")
            }
            _ => return,
        };
        self.reply.extend_from_slice(out.as_bytes());
    }

    /// The desktop reads everything at once.
    fn write_desktop(&mut self, d: DesktopId) {
        let mut iov = [IoSlice::new(&[]); 64];
        let n = self.core.desktop_slices(d, &mut iov);
        let w: usize = iov[..n].iter().map(|s| s.len()).sum();
        black_box(&iov[..n]);
        self.core.desktop_written(self.now, d, w);
    }

    fn deliver(&mut self) {
        while let Some(ep) = self.core.poll_transmit() {
            if let Endpoint::Desktop(d) = ep {
                self.write_desktop(d);
            }
        }
        while self.core.poll_io().is_some() {}
    }

    /// One batch: every desktop's window of requests, through and back.
    fn batch(&mut self) {
        for (k, id) in self.desktops.iter().enumerate() {
            if self.core.poll_read(*id) {
                self.core.desktop_data(self.now, *id, &self.requests[k]);
            }
        }
        self.serve();
        self.deliver();
        self.now += Duration::from_micros(50);
        self.core.handle_timeout(self.now);
    }
}

fn core(c: &mut Criterion) {
    for window in [1usize, 16] {
        let mut rig = Rig::new(window);
        let mut g = c.benchmark_group("core-roundtrip");
        g.throughput(Throughput::Elements((DESKTOPS * window) as u64));
        g.bench_function(format!("window-{window}"), |b| b.iter(|| rig.batch()));
        g.finish();
        assert!(
            rig.core.snapshot().in_flight == 0,
            "every request answered within its batch"
        );
    }
}

criterion_group!(benches, core);
criterion_main!(benches);
