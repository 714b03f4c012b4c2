//! Idle keep-alive connections to the upstream, reused newest first. A connection the
//! upstream has closed while idle is noticed from the reactor's readiness (no syscall in
//! the common case) and dropped at checkout; the short race that remains is covered by a
//! single retry of replayable requests in the caller.

use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::net::TcpStream;

/// An upstream connection with its read buffer (which may hold the start of the next
/// response only on a protocol error, so pooled buffers are always empty).
pub struct UpstreamConn {
    pub stream: TcpStream,
    pub buf: BytesMut,
    /// Came from the pool (so an immediate EOF may just mean the upstream closed it).
    pub reused: bool,
    authority: String,
}

impl UpstreamConn {
    pub async fn connect(
        authority: &http::uri::Authority,
        timeout: Duration,
    ) -> std::io::Result<Self> {
        let port = authority.port_u16().unwrap_or(80);
        let stream = tokio::time::timeout(timeout, TcpStream::connect((authority.host(), port)))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: BytesMut::with_capacity(8 * 1024),
            reused: false,
            authority: authority.as_str().to_owned(),
        })
    }
}

struct Idle {
    conn: UpstreamConn,
    since: Instant,
}

pub struct Pool {
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
}

impl Pool {
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            max_idle,
            idle_timeout,
        }
    }

    /// The most recently used live connection to `authority`, if any.
    pub fn checkout(&self, authority: &http::uri::Authority) -> Option<UpstreamConn> {
        loop {
            let idle = {
                let mut idle = match self.idle.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                idle.pop()?
            };
            // Older connections are below this one: if it is stale, so are they, but they
            // are cheap to drop one by one and this keeps the lock short.
            if idle.since.elapsed() > self.idle_timeout || idle.conn.authority != authority.as_str()
            {
                continue;
            }
            if is_alive(&idle.conn.stream) {
                let mut conn = idle.conn;
                conn.reused = true;
                return Some(conn);
            }
        }
    }

    /// Keeps a connection whose last response ended cleanly.
    pub fn checkin(&self, conn: UpstreamConn) {
        if !conn.buf.is_empty() {
            return;
        }
        let mut idle = match self.idle.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if idle.len() < self.max_idle {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }
}

/// An idle HTTP/1.1 connection has nothing to say: readable means closed (or garbage).
fn is_alive(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            // Readiness can be left over from the last read; ask the socket.
            let mut probe = [0u8; 1];
            matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn closed_idle_connections_are_not_handed_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority: http::uri::Authority =
            listener.local_addr().unwrap().to_string().parse().unwrap();
        let pool = Pool::new(4, Duration::from_secs(60));
        let a = UpstreamConn::connect(&authority, Duration::from_secs(2))
            .await
            .unwrap();
        let (server_a, _) = listener.accept().await.unwrap();
        let b = UpstreamConn::connect(&authority, Duration::from_secs(2))
            .await
            .unwrap();
        let (mut server_b, _) = listener.accept().await.unwrap();
        pool.checkin(a);
        pool.checkin(b);
        // b (newest) gets closed by the server; a stays open.
        server_b.shutdown().await.unwrap();
        drop(server_b);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got = pool.checkout(&authority).expect("the live connection");
        assert!(got.reused);
        assert_eq!(
            got.stream.local_addr().unwrap(),
            server_a.peer_addr().unwrap()
        );
        assert!(pool.checkout(&authority).is_none());
        // Another authority never gets this upstream's connection.
        pool.checkin(got);
        let other: http::uri::Authority = "127.0.0.1:1".parse().unwrap();
        assert!(pool.checkout(&other).is_none());
    }
}
