//! HTTP/1.1 over plain TCP, proxied without hyper: the sidecar's common case.
//!
//! One task per client connection reads a request head, runs the same edge steps as the
//! hyper path (`service::begin`: ids, trace context, path guard, shedding, identity,
//! quotas), writes the rewritten head to a pooled upstream connection and relays both
//! bodies as raw bytes. No body channels, no per-connection client task, no boxed bodies:
//! on two shared cores that bookkeeping cost more than the proxying itself.
//!
//! Anything outside the plain case — HTTP/1.0, HTTP/2 prior knowledge, upgrades, chunked
//! or `Expect` request bodies, absolute-form targets, heads the parser rejects — is
//! handed to hyper with the bytes read so far put back (`Rewind`), for the rest of that
//! connection. Responses may use any framing (length, chunked, close-delimited).

mod chunked;
mod pool;
mod rewind;

pub use pool::Pool;

use std::mem::MaybeUninit;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, StatusCode};
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, timeout, timeout_at};

use self::chunked::ChunkedScanner;
use self::pool::UpstreamConn;
pub use self::rewind::Rewind;
use super::body::BodyEnd;
use super::errors::json_error;
use super::forward::{self, UpstreamFailure};
use super::headers;
use super::service::{
    Added, Begun, Completion, ConnInfo, Dynamic, Proxy, Refusal, RequestFacts, added_headers,
    begin, refusal_response, response_headers, upstream_headers,
};
use crate::metrics::UpstreamErrorLabels;

/// Upstream response heads larger than this are a broken upstream (502).
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
const MAX_RESPONSE_HEADERS: usize = 128;
/// Read size for bodies in either direction.
const READ_CHUNK: usize = 16 * 1024;
/// After refusing a request whose body was not read, how long and how much of it is read
/// and discarded before closing, so the refusal is not lost to a TCP reset.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;

/// Serves one accepted plain-TCP connection until it closes, the proxy stops, or it is
/// handed to hyper. `watcher` keeps the graceful drain waiting for this connection.
pub async fn serve(
    stream: TcpStream,
    info: ConnInfo,
    proxy: Arc<Proxy>,
    stop: watch::Receiver<bool>,
    watcher: Watcher,
) {
    let mut c = Client {
        stream,
        stop,
        identity: None,
        added: Vec::with_capacity(12),
        added_bytes: Vec::with_capacity(512),
        buf: BytesMut::with_capacity(8 * 1024),
        out: Vec::with_capacity(1024),
        info,
    };
    loop {
        let (head_timeout, max_headers, max_head_bytes) = {
            let d = proxy.current();
            let l = &d.cfg.limits;
            (
                Duration::from_millis(l.header_read_timeout_ms),
                l.max_headers,
                l.max_header_bytes.max(1024),
            )
        };
        let req = match read_head(&mut c, head_timeout, max_headers, max_head_bytes).await {
            Head::Request(r) => r,
            Head::Closed => return,
            Head::TooLarge(what) => {
                let _ = head_refusal(&mut c, what).await;
                linger_close(&mut c.stream).await;
                return;
            }
            Head::Handoff(prefix) => {
                let io = Rewind::new(prefix, c.stream);
                super::server::serve_hyper(io, info, proxy, watcher).await;
                return;
            }
        };
        match exchange(&mut c, &proxy, req).await {
            Next::KeepAlive if !c.draining() => {}
            Next::KeepAlive | Next::Close => return,
            Next::Linger => {
                linger_close(&mut c.stream).await;
                return;
            }
        }
    }
}

struct Client {
    stream: TcpStream,
    /// Turns true when the proxy starts draining.
    stop: watch::Receiver<bool>,
    /// The key this connection last presented and its principal.
    identity: Option<crate::identity::Memo>,
    /// Scratch for the agent's response headers (`service::added_headers`): which to add,
    /// with their names and values copied into `added_bytes`.
    added: Vec<AddedField>,
    added_bytes: Vec<u8>,
    /// Bytes read from the client and not yet used (the next head, or body bytes).
    buf: BytesMut,
    /// Scratch for heads written to either side.
    out: Vec<u8>,
    info: ConnInfo,
}

impl Client {
    /// The proxy is draining: finish the current exchange, then close (and say so).
    fn draining(&self) -> bool {
        *self.stop.borrow()
    }
}

enum Head {
    Request(Parsed),
    Closed,
    TooLarge(&'static str),
    Handoff(Bytes),
}

/// The next action on the client connection after an exchange.
enum Next {
    KeepAlive,
    Close,
    /// Request bytes may be left unread: half-close and drain before closing.
    Linger,
}

struct Parsed {
    method: Method,
    target: PathAndQuery,
    headers: HeaderMap,
    content_length: u64,
    keep_alive: bool,
}

enum Parse {
    Complete(Parsed),
    Partial,
    TooManyHeaders,
    /// Not the plain case: hyper takes the connection with these bytes in front.
    Handoff,
}

async fn read_head(
    c: &mut Client,
    head_timeout: Duration,
    max_headers: usize,
    max_head_bytes: usize,
) -> Head {
    let deadline = Instant::now() + head_timeout;
    loop {
        if !c.buf.is_empty() {
            match parse_request(&mut c.buf, max_headers) {
                Parse::Complete(p) => return Head::Request(p),
                Parse::Handoff => return Head::Handoff(c.buf.split().freeze()),
                Parse::TooManyHeaders => return Head::TooLarge("too many request headers"),
                Parse::Partial if c.buf.len() >= max_head_bytes => {
                    return Head::TooLarge("request head too large");
                }
                Parse::Partial => {}
            }
        }
        if c.buf.capacity() - c.buf.len() < 1024 {
            c.buf.reserve(8 * 1024);
        }
        let read = if c.buf.is_empty() {
            // Between requests a draining proxy closes the idle connection.
            if c.draining() {
                return Head::Closed;
            }
            tokio::select! {
                r = timeout_at(deadline, c.stream.read_buf(&mut c.buf)) => r,
                _ = c.stop.changed() => return Head::Closed,
            }
        } else {
            timeout_at(deadline, c.stream.read_buf(&mut c.buf)).await
        };
        match read {
            Ok(Ok(n)) if n > 0 => {}
            // Closed, failed, or the header read timeout: nothing to answer.
            _ => return Head::Closed,
        }
    }
}

/// Header slots on the stack for the usual limit; a larger configured limit allocates.
const STACK_HEADER_SLOTS: usize = 128;

fn parse_request(buf: &mut BytesMut, max_headers: usize) -> Parse {
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADER_SLOTS];
    let mut heap = Vec::new();
    let slots: &mut [MaybeUninit<httparse::Header<'_>>] = if max_headers <= STACK_HEADER_SLOTS {
        &mut stack[..max_headers]
    } else {
        heap.resize_with(max_headers, MaybeUninit::uninit);
        &mut heap
    };
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parse::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parse::TooManyHeaders,
        Err(_) => return Parse::Handoff,
    };
    if req.version != Some(1) {
        return Parse::Handoff;
    }
    let Some(Ok(method)) = req.method.map(|m| Method::from_bytes(m.as_bytes())) else {
        return Parse::Handoff;
    };
    let target = req.path.unwrap_or("");
    if !target.starts_with('/') {
        return Parse::Handoff;
    }
    // Offsets into the head, so names and values can share its bytes after the split.
    let base = buf.as_ptr() as usize;
    let Some(target_at) = offset(base, target.as_bytes()) else {
        return Parse::Handoff;
    };
    let mut fields: Vec<(HeaderName, usize, usize)> = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
            return Parse::Handoff;
        };
        let Some((at, len)) = offset(base, h.value) else {
            return Parse::Handoff;
        };
        fields.push((name, at, len));
    }
    let head = buf.split_to(head_len).freeze();
    match build_request(&head, method, target_at, fields) {
        Some(p) => Parse::Complete(p),
        None => {
            // Put the head back in front of what followed it.
            let mut all = BytesMut::with_capacity(head.len() + buf.len());
            all.extend_from_slice(&head);
            all.extend_from_slice(buf);
            *buf = all;
            Parse::Handoff
        }
    }
}

fn build_request(
    head: &Bytes,
    method: Method,
    target_at: (usize, usize),
    fields: Vec<(HeaderName, usize, usize)>,
) -> Option<Parsed> {
    let target = PathAndQuery::from_maybe_shared(head.slice(within(head, target_at)?)).ok()?;
    let mut headers = HeaderMap::with_capacity(fields.len() + 6);
    for (name, at, len) in fields {
        let value = HeaderValue::from_maybe_shared(head.slice(within(head, (at, len))?)).ok()?;
        headers.append(name, value);
    }
    // Request bodies other than a single plain length, and protocol switches, are hyper's.
    if headers.contains_key(header::TRANSFER_ENCODING)
        || headers.contains_key(header::EXPECT)
        || headers.contains_key(header::UPGRADE)
    {
        return None;
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let content_length = match (lengths.next(), lengths.next()) {
        (None, _) => 0,
        (Some(v), None) => parse_length(v.as_bytes())?,
        (Some(_), Some(_)) => return None,
    };
    let keep_alive = !has_token(&headers, header::CONNECTION, "close");
    Some(Parsed {
        method,
        target,
        headers,
        content_length,
        keep_alive,
    })
}

/// Where `part` (a slice the parser returned) sits in the buffer starting at `base`.
fn offset(base: usize, part: &[u8]) -> Option<(usize, usize)> {
    (part.as_ptr() as usize)
        .checked_sub(base)
        .map(|at| (at, part.len()))
}

/// The range `(at, len)` if it lies within `head`.
fn within(head: &Bytes, (at, len): (usize, usize)) -> Option<std::ops::Range<usize>> {
    let end = at.checked_add(len)?;
    (end <= head.len()).then_some(at..end)
}

/// Digits only: `str::parse` would also take a sign.
fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

fn has_token(h: &HeaderMap, name: HeaderName, token: &str) -> bool {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// One request and its response.
async fn exchange(c: &mut Client, proxy: &Arc<Proxy>, mut req: Parsed) -> Next {
    let Begun {
        dynamic,
        mut done,
        admitted,
    } = begin(
        proxy,
        c.info,
        RequestFacts {
            method: &req.method,
            path: req.target.path(),
            headers: &req.headers,
            uri_host: None,
            protocol: "HTTP/1.1",
        },
        Some(&mut c.identity),
    )
    .await;
    let keep_alive = req.keep_alive;
    if let Err(r) = admitted {
        let pending = req.content_length;
        return answer_locally(c, &dynamic, &mut done, r, keep_alive, pending).await;
    }

    // The body bytes that arrived with the head go out with the upstream head.
    let prefix_len = (req.content_length.min(c.buf.len() as u64)) as usize;
    let body_prefix = c.buf.split_to(prefix_len).freeze();
    let body_rest = req.content_length - prefix_len as u64;
    done.bytes_in.store(prefix_len as u64, Ordering::Relaxed);

    let authority = dynamic.upstream.authority.clone();
    let mut upstream_head = Vec::with_capacity(512 + body_prefix.len());
    {
        let Parsed {
            method,
            target,
            headers,
            ..
        } = &mut req;
        let mut headers = std::mem::take(headers);
        let original_host = headers.get(header::HOST).cloned();
        upstream_headers(
            &dynamic,
            &done.ids,
            c.info,
            &mut headers,
            original_host,
            false,
        );
        let o = &mut upstream_head;
        o.extend_from_slice(method.as_str().as_bytes());
        o.push(b' ');
        o.extend_from_slice(target.as_str().as_bytes());
        o.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        o.extend_from_slice(authority.as_str().as_bytes());
        o.extend_from_slice(b"\r\n");
        write_headers(o, &headers);
        o.extend_from_slice(b"\r\n");
        o.extend_from_slice(&body_prefix);
    }

    let timeouts = &dynamic.cfg.timeouts;
    let connect_timeout = Duration::from_millis(timeouts.connect_ms);
    let head_timeout = Duration::from_millis(timeouts.response_headers_ms);
    let idle = Duration::from_millis(timeouts.body_idle_ms);
    let is_head = req.method == Method::HEAD;
    let started = std::time::Instant::now();
    done.upstream_started = Some(started);
    let mut retried = false;
    // RFC 9110 §9.2.2: only these may be sent again after the upstream may have seen them.
    let idempotent = matches!(
        req.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    );
    let (mut up, resp) = loop {
        // A retry always gets a new connection.
        let pooled = if retried {
            None
        } else {
            proxy.pool.checkout(&authority)
        };
        let mut up = match pooled {
            Some(up) => up,
            None => match UpstreamConn::connect(&authority, connect_timeout).await {
                Ok(up) => up,
                Err(e) => {
                    let f = Failure {
                        what: if e.kind() == std::io::ErrorKind::TimedOut {
                            forward::CONNECT_TIMEOUT
                        } else {
                            forward::CONNECT_REFUSED
                        },
                        pending: body_rest,
                    };
                    return upstream_failed(c, &dynamic, &mut done, f, keep_alive).await;
                }
            },
        };
        // A reused connection may have been closed by the upstream a moment ago; a
        // request whose body is all in hand can be sent again on a fresh one. A failed
        // write never reached a live upstream; a connection that closed after the write
        // might have, so then only idempotent requests are repeated.
        let replayable = up.reused && body_rest == 0 && !retried;
        if up.stream.write_all(&upstream_head).await.is_err() {
            if replayable {
                retried = true;
                continue;
            }
            let f = Failure {
                what: forward::BROKEN,
                pending: body_rest,
            };
            return upstream_failed(c, &dynamic, &mut done, f, keep_alive).await;
        }
        if body_rest > 0 {
            match relay_request_body(c, &mut up, body_rest, idle, &done).await {
                Ok(()) => {}
                Err(BodyRelay::Client) => {
                    done.status = 499;
                    done.record(BodyEnd::ClientGone, 0);
                    return Next::Close;
                }
                Err(BodyRelay::Upstream(pending)) => {
                    let f = Failure {
                        what: forward::BROKEN,
                        pending,
                    };
                    return upstream_failed(c, &dynamic, &mut done, f, keep_alive).await;
                }
            }
        }
        // A client that leaves while the upstream thinks is recorded (499) and the
        // upstream connection closed, which is how the upstream learns to stop.
        let head = tokio::select! {
            r = timeout(head_timeout, read_response_head(&mut up, is_head)) => r,
            () = client_gone(&mut c.stream, &mut c.buf) => {
                done.status = 499;
                done.record(BodyEnd::ClientGone, 0);
                return Next::Close;
            }
        };
        match head {
            Ok(Ok(resp)) => break (up, resp),
            Ok(Err(RespError::ClosedEarly)) if replayable && idempotent => {
                retried = true;
                continue;
            }
            Ok(Err(_)) => {
                let f = Failure {
                    what: forward::BROKEN,
                    pending: 0,
                };
                return upstream_failed(c, &dynamic, &mut done, f, keep_alive).await;
            }
            Err(_) => {
                let f = Failure {
                    what: forward::RESPONSE_TIMEOUT,
                    pending: 0,
                };
                return upstream_failed(c, &dynamic, &mut done, f, keep_alive).await;
            }
        }
    };
    done.upstream_ms = Some((started.elapsed().as_secs_f64() * 1e6).round() / 1e3);
    done.upstream_status = Some(resp.status.as_u16());

    let RespHead {
        status,
        head,
        fields,
        framing,
        keep_alive: upstream_keep_alive,
    } = resp;
    done.status = status.as_u16();
    // A draining proxy tells the client this connection ends with this response.
    let client_keep = keep_alive && !matches!(framing, Framing::Close) && !c.draining();
    c.out.clear();
    write_status_line(&mut c.out, status);
    write_response_headers(c, &done, &dynamic, &head, &fields);
    if matches!(framing, Framing::Chunked) {
        c.out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !client_keep {
        c.out.extend_from_slice(b"connection: close\r\n");
    }
    c.out.extend_from_slice(b"\r\n");

    let (end, bytes_out) = relay_response_body(c, &mut up, framing, idle).await;
    done.record(end, bytes_out);
    match end {
        BodyEnd::Complete => {
            if upstream_keep_alive {
                proxy.pool.checkin(up);
            }
            if client_keep {
                Next::KeepAlive
            } else {
                Next::Close
            }
        }
        // A cut response must look cut to the client: the connection ends mid-body.
        _ => Next::Close,
    }
}

/// A failed upstream call, and how many request body bytes the client may still be
/// sending.
struct Failure {
    what: UpstreamFailure,
    pending: u64,
}

/// Counts an upstream failure and answers it.
async fn upstream_failed(
    c: &mut Client,
    dynamic: &Dynamic,
    done: &mut Completion,
    f: Failure,
    keep_alive: bool,
) -> Next {
    if let Some(t) = done.upstream_started {
        done.upstream_ms = Some((t.elapsed().as_secs_f64() * 1e6).round() / 1e3);
    }
    done.upstream_error = Some(f.what.kind);
    done.proxy
        .metrics
        .upstream_errors
        .get_or_create(&UpstreamErrorLabels {
            class: done.class.as_str(),
            kind: f.what.kind,
        })
        .inc();
    answer_locally(c, dynamic, done, f.what.refusal(), keep_alive, f.pending).await
}

/// The agent's own JSON answer. `pending` request body bytes are skipped if they are
/// already buffered; if more are still on the wire the connection is closed after the
/// answer (its framing can no longer be trusted to line up).
async fn answer_locally(
    c: &mut Client,
    dynamic: &Dynamic,
    done: &mut Completion,
    r: Refusal,
    keep_alive: bool,
    pending: u64,
) -> Next {
    let (mut parts, body) = refusal_response(done, r).into_parts();
    response_headers(done, dynamic, &mut parts.headers);
    done.status = parts.status.as_u16();
    let here = (pending.min(c.buf.len() as u64)) as usize;
    c.buf.advance(here);
    let unread = pending - here as u64;
    let keep = keep_alive && unread == 0 && !c.draining();
    c.out.clear();
    write_status_line(&mut c.out, parts.status);
    write_headers(&mut c.out, &parts.headers);
    c.out.extend_from_slice(b"content-length: ");
    c.out.extend_from_slice(body.len().to_string().as_bytes());
    c.out.extend_from_slice(b"\r\n");
    if !keep {
        c.out.extend_from_slice(b"connection: close\r\n");
    }
    c.out.extend_from_slice(b"\r\n");
    c.out.extend_from_slice(&body);
    if c.stream.write_all(&c.out).await.is_err() {
        done.record(BodyEnd::ClientGone, 0);
        return Next::Close;
    }
    done.record(BodyEnd::Complete, body.len() as u64);
    if keep {
        Next::KeepAlive
    } else if unread > 0 {
        Next::Linger
    } else {
        Next::Close
    }
}

/// 431 for a head over the limits; it never became a request (no id was sent, none is
/// logged), so the answer carries a fresh one.
async fn head_refusal(c: &mut Client, why: &'static str) -> std::io::Result<()> {
    let request_id = minirag_contracts::ids::new_request_id();
    let (parts, body) = json_error(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "request_header_fields_too_large",
        why,
        &request_id,
        serde_json::Map::new(),
    )
    .into_parts();
    c.out.clear();
    write_status_line(&mut c.out, parts.status);
    write_headers(&mut c.out, &parts.headers);
    c.out.extend_from_slice(b"x-request-id: ");
    c.out.extend_from_slice(request_id.as_bytes());
    c.out.extend_from_slice(b"\r\ncontent-length: ");
    c.out.extend_from_slice(body.len().to_string().as_bytes());
    c.out.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
    c.out.extend_from_slice(&body);
    c.stream.write_all(&c.out).await
}

async fn linger_close(stream: &mut TcpStream) {
    let _ = stream.shutdown().await;
    let deadline = Instant::now() + LINGER;
    let mut scratch = vec![0u8; 16 * 1024];
    let mut total = 0;
    while total < LINGER_BYTES {
        match timeout_at(deadline, stream.read(&mut scratch)).await {
            Ok(Ok(n)) if n > 0 => total += n,
            _ => break,
        }
    }
}

/// Resolves when the client closes its side or its connection fails. Bytes it sends
/// meanwhile (a pipelined request) are kept; past the limit it is no longer watched.
async fn client_gone(stream: &mut TcpStream, buf: &mut BytesMut) {
    loop {
        if buf.len() >= LINGER_BYTES {
            return std::future::pending().await;
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(8 * 1024);
        }
        match stream.read_buf(buf).await {
            Ok(n) if n > 0 => {}
            _ => return,
        }
    }
}

enum BodyRelay {
    Client,
    /// The upstream stopped taking the body; this much of it was never read.
    Upstream(u64),
}

async fn relay_request_body(
    c: &mut Client,
    up: &mut UpstreamConn,
    mut remaining: u64,
    idle: Duration,
    done: &Completion,
) -> Result<(), BodyRelay> {
    while remaining > 0 {
        if c.buf.capacity() - c.buf.len() < 1024 {
            c.buf.reserve(READ_CHUNK);
        }
        match timeout(idle, c.stream.read_buf(&mut c.buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Err(BodyRelay::Client),
        }
        let take = (remaining.min(c.buf.len() as u64)) as usize;
        if up.stream.write_all(&c.buf[..take]).await.is_err() {
            return Err(BodyRelay::Upstream(remaining - take as u64));
        }
        c.buf.advance(take);
        remaining -= take as u64;
        done.bytes_in.fetch_add(take as u64, Ordering::Relaxed);
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Ends when the upstream closes (HTTP/1.0 style).
    Close,
}

struct RespHead {
    status: StatusCode,
    /// The raw head; `fields` point into it.
    head: Bytes,
    /// The upstream's header fields that are forwarded (hop-by-hop ones, and a length
    /// the framing overrides, are already left out).
    fields: Vec<Field>,
    framing: Framing,
    keep_alive: bool,
}

/// One header field of a raw head, as byte ranges (httparse validated both: a name is a
/// token, a value has no CR or LF, so they can be written out as they came).
struct Field {
    name: (usize, usize),
    value: (usize, usize),
}

impl Field {
    fn name<'a>(&self, head: &'a [u8]) -> &'a [u8] {
        head.get(self.name.0..self.name.0 + self.name.1)
            .unwrap_or_default()
    }

    fn value<'a>(&self, head: &'a [u8]) -> &'a [u8] {
        head.get(self.value.0..self.value.0 + self.value.1)
            .unwrap_or_default()
    }
}

/// The upstream's forwarded fields, then the agent's own (`service::added_headers`):
/// replacements drop the upstream's field of that name, defaults apply only where the
/// upstream sent none.
fn write_response_headers(
    c: &mut Client,
    done: &Completion,
    dynamic: &Dynamic,
    head: &[u8],
    fields: &[Field],
) {
    c.added.clear();
    c.added_bytes.clear();
    let (added, bytes) = (&mut c.added, &mut c.added_bytes);
    added_headers(done, dynamic, |mode, name, value| {
        let start = bytes.len();
        bytes.extend_from_slice(name.as_str().as_bytes());
        let split = bytes.len();
        bytes.extend_from_slice(value.as_bytes());
        added.push(AddedField {
            mode,
            name: start..split,
            value: split..bytes.len(),
            upstream_has: false,
        });
    });
    for f in fields {
        let name = f.name(head);
        let mut replaced = false;
        for a in c.added.iter_mut() {
            if c.added_bytes[a.name.clone()].eq_ignore_ascii_case(name) {
                match a.mode {
                    Added::Replace => replaced = true,
                    Added::IfAbsent => a.upstream_has = true,
                }
            }
        }
        if !replaced {
            c.out.extend_from_slice(name);
            c.out.extend_from_slice(b": ");
            c.out.extend_from_slice(f.value(head));
            c.out.extend_from_slice(b"\r\n");
        }
    }
    for a in &c.added {
        if a.mode == Added::Replace || !a.upstream_has {
            c.out.extend_from_slice(&c.added_bytes[a.name.clone()]);
            c.out.extend_from_slice(b": ");
            c.out.extend_from_slice(&c.added_bytes[a.value.clone()]);
            c.out.extend_from_slice(b"\r\n");
        }
    }
}

/// One header from `service::added_headers`, its name and value as ranges of
/// `Client::added_bytes`.
struct AddedField {
    mode: Added,
    name: std::ops::Range<usize>,
    value: std::ops::Range<usize>,
    /// For `Added::IfAbsent`: the upstream sent its own.
    upstream_has: bool,
}

#[derive(Debug)]
enum RespError {
    /// The connection ended before any byte of a response.
    ClosedEarly,
    Broken,
}

async fn read_response_head(up: &mut UpstreamConn, is_head: bool) -> Result<RespHead, RespError> {
    loop {
        if !up.buf.is_empty() {
            match parse_response(&mut up.buf, is_head)? {
                Some(Some(head)) => return Ok(head),
                // An interim (1xx) response was consumed; the final one follows.
                Some(None) => continue,
                None if up.buf.len() >= MAX_RESPONSE_HEAD => return Err(RespError::Broken),
                None => {}
            }
        }
        if up.buf.capacity() - up.buf.len() < 1024 {
            up.buf.reserve(READ_CHUNK);
        }
        match up.stream.read_buf(&mut up.buf).await {
            Ok(n) if n > 0 => {}
            _ if up.buf.is_empty() => return Err(RespError::ClosedEarly),
            _ => return Err(RespError::Broken),
        }
    }
}

/// `None`: incomplete; `Some(None)`: an interim response was skipped.
fn parse_response(
    buf: &mut BytesMut,
    is_head: bool,
) -> Result<Option<Option<RespHead>>, RespError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let head_len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(RespError::Broken),
    };
    let code = resp.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| RespError::Broken)?;
    if status.is_informational() {
        // 101 only follows an upgrade request, and those are hyper's.
        if code == 101 {
            return Err(RespError::Broken);
        }
        buf.advance(head_len);
        return Ok(Some(None));
    }
    let http11 = resp.version == Some(1);
    let base = buf.as_ptr() as usize;
    let mut fields: Vec<Field> = Vec::with_capacity(resp.headers.len());
    let mut hop = Vec::with_capacity(resp.headers.len());
    let mut chunked = None;
    let mut length: Option<u64> = None;
    let mut close = false;
    // Extra hop-by-hop names a Connection header lists (rare).
    let mut named: Vec<Vec<u8>> = Vec::new();
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        // `upgrade` too: the fast path never asked for a protocol switch.
        let is_hop = headers::is_hop_by_hop(name) || name.eq_ignore_ascii_case(b"upgrade");
        if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive") {
                    named.push(token.to_ascii_lowercase());
                }
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // The last coding of the last field decides.
            let last = h
                .value
                .rsplit(|b| *b == b',')
                .next()
                .unwrap_or(b"")
                .trim_ascii();
            chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let this = parse_length(h.value).ok_or(RespError::Broken)?;
            if length.is_some_and(|prev| prev != this) {
                return Err(RespError::Broken);
            }
            length = Some(this);
        }
        hop.push(is_hop);
        fields.push(Field {
            name: offset(base, h.name.as_bytes()).ok_or(RespError::Broken)?,
            value: offset(base, h.value).ok_or(RespError::Broken)?,
        });
    }
    // RFC 9112 §6.3, in order.
    let framing = if is_head || code == 204 || code == 304 {
        Framing::Empty
    } else if let Some(chunked) = chunked {
        if chunked {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else {
        match length {
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    let head = buf.split_to(head_len).freeze();
    let drop_length = matches!(framing, Framing::Chunked | Framing::Close);
    let mut i = 0;
    fields.retain(|f| {
        let name = f.name(&head);
        let overridden_length = drop_length && name.eq_ignore_ascii_case(b"content-length");
        let keep =
            !hop[i] && !overridden_length && !named.iter().any(|n| n.eq_ignore_ascii_case(name));
        i += 1;
        keep
    });
    let keep_alive = http11 && !close && !matches!(framing, Framing::Close);
    Ok(Some(Some(RespHead {
        status,
        head,
        fields,
        framing,
        keep_alive,
    })))
}

/// Writes the head already in `c.out` and the body after it. Returns how the body ended
/// and the payload bytes sent.
async fn relay_response_body(
    c: &mut Client,
    up: &mut UpstreamConn,
    framing: Framing,
    idle: Duration,
) -> (BodyEnd, u64) {
    match framing {
        Framing::Empty => match c.stream.write_all(&c.out).await {
            Ok(()) => (BodyEnd::Complete, 0),
            Err(_) => (BodyEnd::ClientGone, 0),
        },
        Framing::Length(total) => {
            let first = (total.min(up.buf.len() as u64)) as usize;
            c.out.extend_from_slice(&up.buf[..first]);
            up.buf.advance(first);
            if c.stream.write_all(&c.out).await.is_err() {
                return (BodyEnd::ClientGone, first as u64);
            }
            let mut sent = first as u64;
            while sent < total {
                match read_upstream(up, idle).await {
                    Ok(()) => {}
                    Err(end) => return (end, sent),
                }
                let take = ((total - sent).min(up.buf.len() as u64)) as usize;
                if c.stream.write_all(&up.buf[..take]).await.is_err() {
                    return (BodyEnd::ClientGone, sent);
                }
                up.buf.advance(take);
                sent += take as u64;
            }
            (BodyEnd::Complete, sent)
        }
        Framing::Chunked => {
            let mut scanner = ChunkedScanner::default();
            let mut first = true;
            loop {
                let n = match scanner.feed(&up.buf) {
                    Ok(n) => n,
                    Err(_) => return (BodyEnd::Failed, scanner.data_bytes),
                };
                let wrote = if first {
                    first = false;
                    c.out.extend_from_slice(&up.buf[..n]);
                    c.stream.write_all(&c.out).await
                } else {
                    c.stream.write_all(&up.buf[..n]).await
                };
                if wrote.is_err() {
                    return (BodyEnd::ClientGone, scanner.data_bytes);
                }
                up.buf.advance(n);
                if scanner.is_done() {
                    return (BodyEnd::Complete, scanner.data_bytes);
                }
                if let Err(end) = read_upstream(up, idle).await {
                    return (end, scanner.data_bytes);
                }
            }
        }
        Framing::Close => {
            let mut sent = up.buf.len() as u64;
            c.out.extend_from_slice(&up.buf);
            up.buf.clear();
            if c.stream.write_all(&c.out).await.is_err() {
                return (BodyEnd::ClientGone, sent);
            }
            loop {
                match read_upstream(up, idle).await {
                    Ok(()) => {}
                    Err(BodyEnd::Failed) => return (BodyEnd::Complete, sent),
                    Err(end) => return (end, sent),
                }
                if c.stream.write_all(&up.buf).await.is_err() {
                    return (BodyEnd::ClientGone, sent);
                }
                sent += up.buf.len() as u64;
                up.buf.clear();
            }
        }
    }
}

/// Reads more of the response body into `up.buf`; the end of the stream or an error is
/// `Failed` (the framing said more was coming), silence past `idle` is `IdleTimeout`.
async fn read_upstream(up: &mut UpstreamConn, idle: Duration) -> Result<(), BodyEnd> {
    if up.buf.capacity() - up.buf.len() < 1024 {
        up.buf.reserve(READ_CHUNK);
    }
    match timeout(idle, up.stream.read_buf(&mut up.buf)).await {
        Ok(Ok(n)) if n > 0 => Ok(()),
        Ok(_) => Err(BodyEnd::Failed),
        Err(_) => Err(BodyEnd::IdleTimeout),
    }
}

fn write_status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn write_headers(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> (Parse, BytesMut) {
        let mut buf = BytesMut::from(raw.as_bytes());
        let p = parse_request(&mut buf, 10);
        (p, buf)
    }

    #[test]
    fn plain_requests_are_parsed_and_the_body_stays_in_the_buffer() {
        let (p, rest) = parse(
            "POST /api/v1/ask?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nX-A: 1\r\nX-A: 2\r\n\r\nbody",
        );
        let Parse::Complete(p) = p else {
            panic!("complete")
        };
        assert_eq!(p.method, Method::POST);
        assert_eq!(p.target.as_str(), "/api/v1/ask?x=1");
        assert_eq!(p.target.path(), "/api/v1/ask");
        assert_eq!(p.content_length, 4);
        assert!(p.keep_alive);
        assert_eq!(p.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(&rest[..], b"body");
        // Empty values are values too (and must not confuse the offsets).
        let (p, _) = parse("GET / HTTP/1.1\r\nX-Empty:\r\nX-Blank:   \r\nHost: a\r\n\r\n");
        let Parse::Complete(p) = p else {
            panic!("complete")
        };
        assert_eq!(p.headers["x-empty"], "");
        assert_eq!(p.headers["x-blank"], "");
        assert_eq!(p.headers["host"], "a");
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\nX-Empty:\r\nContent-Length: 0\r\n\r\n"[..]);
        let Ok(Some(Some(h))) = parse_response(&mut buf, false) else {
            panic!("response")
        };
        assert_eq!(h.fields.len(), 2);
        assert_eq!(h.fields[0].name(&h.head), b"X-Empty");
        assert_eq!(h.fields[0].value(&h.head), b"");
        let (p, _) = parse("GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n");
        let Parse::Complete(p) = p else {
            panic!("complete")
        };
        assert!(!p.keep_alive);
    }

    #[test]
    fn anything_but_the_plain_case_goes_to_hyper_with_its_bytes_intact() {
        for raw in [
            "GET / HTTP/1.0\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            "GET /ws HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx",
            "GET http://example.com/ HTTP/1.1\r\n\r\n",
        ] {
            let (p, rest) = parse(raw);
            assert!(matches!(p, Parse::Handoff), "{raw:?}");
            assert_eq!(&rest[..], raw.as_bytes(), "{raw:?}");
        }
        assert!(matches!(
            parse("GET / HTTP/1.1\r\nHost: a").0,
            Parse::Partial
        ));
        let many: String = (0..11).map(|i| format!("X-{i}: v\r\n")).collect();
        assert!(matches!(
            parse(&format!("GET / HTTP/1.1\r\n{many}\r\n")).0,
            Parse::TooManyHeaders
        ));
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let framing = |raw: &str, is_head: bool| {
            let mut buf = BytesMut::from(raw.as_bytes());
            parse_response(&mut buf, is_head)
                .map(|r| r.and_then(|h| h).map(|h| (h.framing, h.keep_alive)))
        };
        assert!(matches!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false),
            Ok(Some((Framing::Length(5), true)))
        ));
        assert!(matches!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true),
            Ok(Some((Framing::Empty, true)))
        ));
        assert!(matches!(
            framing(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 5\r\n\r\n",
                false
            ),
            Ok(Some((Framing::Chunked, true)))
        ));
        assert!(matches!(
            framing("HTTP/1.1 200 OK\r\n\r\n", false),
            Ok(Some((Framing::Close, false)))
        ));
        assert!(matches!(
            framing(
                "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
                false
            ),
            Ok(Some((Framing::Empty, false)))
        ));
        assert!(matches!(
            framing("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false),
            Ok(Some((Framing::Length(1), false)))
        ));
        assert!(
            framing(
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false
            )
            .is_err()
        );
        // An interim response is skipped.
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n"[..],
        );
        assert!(matches!(parse_response(&mut buf, false), Ok(Some(None))));
        assert_eq!(&buf[..], b"HTTP/1.1 200 OK\r\n");
    }
}
