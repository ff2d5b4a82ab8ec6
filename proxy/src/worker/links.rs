//! The driver's side of the upstream links: TCP connects (with TLS when the upstream is
//! configured for it, [`crate::link_tls`]), reads handed to the core, the vectored writes of
//! what the core queued, and dropping a failed link's socket. The link's state machine itself
//! lives in the core (`core/link.rs`).
//!
//! A TLS link is `connected` for the core as soon as TCP is: the core then queues its
//! `LINK_HELLO`, which rustls holds until the server's certificate is verified. A failed
//! verification (or any TLS error) surfaces as a read error and fails the link like a refused
//! hello: reconnects back off, and the handshake deadline (`LINK_HANDSHAKE`) covers TCP, TLS
//! and the hello together.

use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;

use mio::{Interest, Token};
use tracing::warn;

use super::{IOV, LINK_BASE, LinkSec, LinkSock, Worker};
use crate::core::{Endpoint, LinkId};
use crate::tls::TlsStream;
use crate::transport::{LinkStream, connect_upstream};

impl Worker {
    pub(super) fn link_event(&mut self, i: usize, readable: bool, writable: bool) {
        let Some(Some(ls)) = self.links.get_mut(i) else {
            return;
        };
        let id = LinkId {
            index: i as u16,
            generation: ls.generation,
        };
        let now = self.now;
        if !ls.connected {
            if !writable && !readable {
                return;
            }
            match ls.sock.tcp().take_error() {
                Ok(None) if ls.sock.tcp().peer_addr().is_ok() => {
                    ls.connected = true;
                    self.core.link_connected(now, id);
                }
                // Still connecting (a spurious event).
                Ok(None) => {}
                _ => {
                    self.drop_link(id);
                    self.core.link_lost(now, id, "connect failed");
                }
            }
            return;
        }
        if writable {
            self.core.writable(Endpoint::Link(id));
        }
        if readable {
            self.read_link(id);
        }
    }

    pub(super) fn read_link(&mut self, id: LinkId) {
        loop {
            let Some(Some(ls)) = self.links.get_mut(id.index as usize) else {
                return;
            };
            if ls.generation != id.generation {
                return;
            }
            let now = self.now;
            match ls.sock.read(&mut self.scratch) {
                Ok(0) => {
                    self.drop_link(id);
                    self.core.link_lost(now, id, "closed by server");
                    return;
                }
                Ok(n) => self.core.link_data(now, id, &self.scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // InvalidData: a TLS failure (certificate not verified, alert, bad
                    // record), logged here with rustls' reason: a link is the operator's own
                    // (the stream logs desktops' failures at debug only).
                    let why = if e.kind() == io::ErrorKind::InvalidData {
                        self.metrics.error("link_tls");
                        let name = self
                            .core
                            .links()
                            .get(usize::from(id.index))
                            .map(|l| l.name.as_str());
                        warn!(link = name, error = %e, "link tls error; closing");
                        "tls error"
                    } else {
                        "read error"
                    };
                    self.drop_link(id);
                    self.core.link_lost(now, id, why);
                    return;
                }
            }
        }
    }

    pub(super) fn flush_link(&mut self, id: LinkId) {
        let now = self.now;
        loop {
            let Some(Some(ls)) = self.links.get_mut(id.index as usize) else {
                return;
            };
            if ls.generation != id.generation || !ls.connected {
                return;
            }
            // TLS buffers records below the frame queue: those go out with `flush`.
            let tls = matches!(ls.sock, LinkStream::Tls(_));
            let mut iov = [IoSlice::new(&[]); IOV];
            let n = self.core.link_slices(id, &mut iov);
            if n == 0 {
                // TLS records left by an earlier write (or a handshake flight) go out here, on
                // the writable edge; a plain socket has nothing below the queue.
                if !tls {
                    return;
                }
                match ls.sock.flush() {
                    Ok(()) => return,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        self.drop_link(id);
                        self.core.link_lost(now, id, "write error");
                        return;
                    }
                }
            }
            let total: usize = iov[..n].iter().map(|s| s.len()).sum();
            match ls.sock.write_vectored(&iov[..n]) {
                Ok(w) => {
                    self.core.link_written(now, id, w);
                    // Fewer frames than one write takes, all written: nothing is left (but
                    // for TLS records, which the next round's `flush` sends).
                    if w == total && n < IOV && !tls {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.drop_link(id);
                    self.core.link_lost(now, id, "write error");
                    return;
                }
            }
        }
    }

    pub(super) fn drop_link(&mut self, id: LinkId) {
        if let Some(e) = self.links.get_mut(id.index as usize)
            && e.as_ref().is_some_and(|ls| ls.generation == id.generation)
            && let Some(mut ls) = e.take()
        {
            let _ = self.poll.registry().deregister(&mut ls.sock);
        }
    }

    pub(super) fn connect(&mut self, id: LinkId, addr: SocketAddr) {
        let i = id.index as usize;
        if self.links.len() <= i {
            self.links.resize_with(i + 1, || None);
        }
        let sec = match self.link_sec(id) {
            Ok(s) => s,
            Err(e) => {
                warn!(link = i, error = %e, "link tls configuration unusable; not connecting");
                self.core.link_lost(self.now, id, "tls configuration");
                return;
            }
        };
        let sock = match connect_upstream(addr) {
            Ok(tcp) => match sec {
                LinkSec::Plain => Ok(LinkStream::Plain(tcp)),
                LinkSec::Tls(cfg, name) => {
                    TlsStream::connect(tcp, cfg, name, addr).map(|t| LinkStream::Tls(Box::new(t)))
                }
            },
            Err(e) => Err(e),
        };
        match sock {
            Ok(mut sock) => {
                if self
                    .poll
                    .registry()
                    .register(
                        &mut sock,
                        Token(LINK_BASE + i),
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .is_err()
                {
                    self.core.link_lost(self.now, id, "register failed");
                    return;
                }
                self.links[i] = Some(LinkSock {
                    generation: id.generation,
                    sock,
                    connected: false,
                });
            }
            Err(_) => self.core.link_lost(self.now, id, "connect failed"),
        }
    }

    /// How link `id` connects: from the cache of its instance, else built from the current
    /// configuration (and cached).
    fn link_sec(&mut self, id: LinkId) -> Result<LinkSec, String> {
        let inst = self
            .core
            .links()
            .get(id.index as usize)
            .ok_or_else(|| "no such link".to_string())?
            .instance;
        if let Some(s) = self.link_tls.get(&inst) {
            return Ok(s.clone());
        }
        let sec = self.build_link_sec(inst)?;
        self.link_tls.insert(inst, sec.clone());
        Ok(sec)
    }

    fn build_link_sec(&self, inst: usize) -> Result<LinkSec, String> {
        let conf = &self
            .core
            .router()
            .instances
            .get(inst)
            .ok_or_else(|| "no such instance".to_string())?
            .conf;
        Ok(match self.cfg.link_security(conf)? {
            None => LinkSec::Plain,
            Some(s) => LinkSec::Tls(crate::link_tls::client_config(&s)?, s.server_name),
        })
    }

    /// SIGHUP: re-read the link TLS files (a rotated CA or client certificate) for links
    /// connected from now on. An instance whose new files cannot be used keeps what it had;
    /// returns how many were reloaded and the failures.
    pub(super) fn reload_link_tls(&mut self) -> (u64, Vec<String>) {
        let mut failed = Vec::new();
        let mut applied = 0;
        let cached: Vec<usize> = self.link_tls.keys().copied().collect();
        for inst in cached {
            match self.build_link_sec(inst) {
                Ok(s) => {
                    applied += u64::from(matches!(s, LinkSec::Tls(..)));
                    self.link_tls.insert(inst, s);
                }
                Err(e) => failed.push(e),
            }
        }
        (applied, failed)
    }
}
