//! A QUIC desktop's stream as the worker sees it: `Read` / `Write` on the connection's one
//! bidirectional stream, through the endpoint's shared driver state.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::time::Instant;

use mio::event::Source;
use quinn_proto::StreamId;

use super::{CLOSE_LINGER, Driver};

/// A QUIC desktop's stream, as the worker sees it: `Read` / `Write` on the one bidirectional
/// stream; registering with mio is a no-op (readiness comes from [`QuicEvent`]s).
pub struct QuicStream {
    inner: Rc<RefCell<Driver>>,
    ch: usize,
    id: StreamId,
}

impl QuicStream {
    pub(super) fn new(inner: Rc<RefCell<Driver>>, ch: usize, id: StreamId) -> QuicStream {
        QuicStream { inner, ch, id }
    }
}

impl std::fmt::Debug for QuicStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicStream").field("ch", &self.ch).finish()
    }
}

impl io::Read for QuicStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut d = self.inner.borrow_mut();
        let d = &mut *d;
        let c = d.conns.live(self.ch)?;
        let mut recv = c.conn.recv_stream(self.id);
        let mut chunks = match recv.read(true) {
            Ok(ch) => ch,
            Err(_) => return Ok(0),
        };
        let r = match chunks.next(buf.len()) {
            Ok(Some(chunk)) => {
                buf[..chunk.bytes.len()].copy_from_slice(&chunk.bytes);
                Ok(chunk.bytes.len())
            }
            Ok(None) => Ok(0),
            Err(quinn_proto::ReadError::Blocked) => Err(io::ErrorKind::WouldBlock.into()),
            Err(quinn_proto::ReadError::Reset(_)) => Err(io::ErrorKind::ConnectionReset.into()),
        };
        // Flow-control credit may need to be sent.
        let _ = chunks.finalize();
        d.touch(self.ch);
        r
    }
}

impl io::Write for QuicStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[io::IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let mut d = self.inner.borrow_mut();
        let d = &mut *d;
        let c = d.conns.live(self.ch)?;
        let mut total = 0;
        let mut err = None;
        for b in bufs {
            if b.is_empty() {
                continue;
            }
            match c.conn.send_stream(self.id).write(b) {
                Ok(n) => {
                    total += n;
                    if n < b.len() {
                        break;
                    }
                }
                Err(quinn_proto::WriteError::Blocked) => break,
                Err(e) => {
                    err = Some(io::Error::new(io::ErrorKind::BrokenPipe, e));
                    break;
                }
            }
        }
        d.touch(self.ch);
        match err {
            Some(e) if total == 0 => Err(e),
            _ if total == 0 && bufs.iter().any(|b| !b.is_empty()) => {
                Err(io::ErrorKind::WouldBlock.into())
            }
            _ => Ok(total),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for QuicStream {
    fn drop(&mut self) {
        let Ok(mut d) = self.inner.try_borrow_mut() else {
            return;
        };
        let d = &mut *d;
        d.desktops = d.desktops.saturating_sub(1);
        if let Some(c) = d.conns.get_mut(self.ch) {
            c.attached = false;
            c.slot = None;
            if !c.lost {
                // Finish the stream; close once the peer acknowledged it (or after a linger).
                let _ = c.conn.send_stream(self.id).finish();
                c.close_at = Some(Instant::now() + CLOSE_LINGER);
            }
            d.touch(self.ch);
        }
    }
}

impl Source for QuicStream {
    fn register(
        &mut self,
        _registry: &mio::Registry,
        _token: mio::Token,
        _interests: mio::Interest,
    ) -> io::Result<()> {
        Ok(())
    }

    fn reregister(
        &mut self,
        _registry: &mio::Registry,
        _token: mio::Token,
        _interests: mio::Interest,
    ) -> io::Result<()> {
        Ok(())
    }

    fn deregister(&mut self, _registry: &mio::Registry) -> io::Result<()> {
        Ok(())
    }
}
