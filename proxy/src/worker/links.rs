//! The driver's side of the upstream links: TCP connects, reads handed to the core, the
//! vectored writes of what the core queued, and dropping a failed link's socket. The link's
//! state machine itself lives in the core (`core/link.rs`).

use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;

use mio::{Interest, Token};

use super::{IOV, LINK_BASE, LinkSock, Worker};
use crate::core::{Endpoint, LinkId};
use crate::transport::connect_upstream;

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
            match ls.sock.take_error() {
                Ok(None) if ls.sock.peer_addr().is_ok() => {
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
                Err(_) => {
                    self.drop_link(id);
                    self.core.link_lost(now, id, "read error");
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
            let mut iov = [IoSlice::new(&[]); IOV];
            let n = self.core.link_slices(id, &mut iov);
            if n == 0 {
                return;
            }
            let total: usize = iov[..n].iter().map(|s| s.len()).sum();
            match ls.sock.write_vectored(&iov[..n]) {
                Ok(w) => {
                    self.core.link_written(now, id, w);
                    // Fewer frames than one write takes, all written: nothing is left.
                    if w == total && n < IOV {
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
        match connect_upstream(addr) {
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
}
