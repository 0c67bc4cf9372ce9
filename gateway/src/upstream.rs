//! The client for upstream APIs: HTTP/1.1 over pooled keep-alive connections (plain or TLS), driven by the request's
//! own task (no connection task, no channel per request), with request and answer bodies streamed through.

use crate::http1::codec::{self, BodyDecoder, Framing};
use axum::body::Body;
use bytes::{Buf as _, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Response, StatusCode};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Largest answer head accepted from an upstream.
const MAX_ANSWER_HEAD: usize = 64 * 1024;
/// A body frame this small is copied next to the head so both leave in one write.
const COALESCE: usize = 16 * 1024;

/// Why an upstream call failed, for the 502/504 answers.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream timed out")]
    Timeout,
    #[error("upstream failed: {0}")]
    Failed(String),
}

fn failed(what: &str, err: impl std::fmt::Display) -> UpstreamError {
    UpstreamError::Failed(format!("{what}: {err}"))
}

/// An upstream's scheme and authority, parsed once per configuration rather than per request.
#[derive(Debug, Clone)]
pub struct Origin {
    tls: bool,
    /// The host to connect to and to name in TLS (IPv6 literals without brackets).
    connect_host: String,
    port: u16,
    /// Pool key: scheme, host and port.
    key: Arc<str>,
    /// The `Host` header sent when the service does not rewrite it: the authority as written in `api_backend`.
    pub host: http::HeaderValue,
}

impl Origin {
    pub fn of(url: &url::Url) -> Option<Self> {
        let tls = match url.scheme() {
            "http" => false,
            "https" => true,
            _ => return None,
        };
        let host = url.host_str()?;
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let port = url.port_or_known_default()?;
        let connect_host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Some(Self {
            tls,
            key: format!("{}://{connect_host}:{port}", url.scheme()).into(),
            connect_host,
            port,
            host: http::HeaderValue::from_str(&authority).ok()?,
        })
    }
}

/// A connection's byte stream.
enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Io {
    fn tcp(&self) -> &TcpStream {
        match self {
            Io::Plain(tcp) => tcp,
            Io::Tls(tls) => tls.get_ref().0,
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// One connection to an upstream, with what was read from it but not used yet.
struct Conn {
    io: Io,
    buf: BytesMut,
    idle_since: Instant,
}

impl Conn {
    /// An idle connection has nothing to say: readable means the upstream closed it (or broke the protocol).
    fn is_stale(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        !self.buf.is_empty() || self.io.tcp().poll_read_ready(&mut cx).is_ready()
    }
}

/// Idle connections by origin.
struct Pool {
    idle: Mutex<HashMap<Arc<str>, Vec<Conn>, foldhash::fast::RandomState>>,
    max_idle_per_origin: usize,
    idle_timeout: Duration,
}

impl Pool {
    fn take(&self, key: &str) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let conns = idle.get_mut(key)?;
        while let Some(conn) = conns.pop() {
            if conn.idle_since.elapsed() < self.idle_timeout && !conn.is_stale() {
                return Some(conn);
            }
        }
        None
    }

    fn put(&self, key: &Arc<str>, mut conn: Conn) {
        conn.idle_since = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let conns = match idle.get_mut(&**key) {
            Some(conns) => conns,
            None => idle.entry(key.clone()).or_default(),
        };
        if conns.len() < self.max_idle_per_origin {
            conns.push(conn);
        }
    }
}

/// Pooled connections to every upstream (one per proxy thread); cheap to clone.
#[derive(Clone)]
pub struct Upstream {
    pool: Arc<Pool>,
    connect_timeout: Duration,
    timeout: Duration,
}

/// The TLS settings for every upstream: the system's roots (`SSL_CERT_FILE` / `SSL_CERT_DIR` honoured), else
/// Mozilla's bundled ones. Loaded once, on the first TLS connection.
fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                tracing::warn!("no system CA certificates; using the bundled Mozilla roots");
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
            // ring is the only provider built in, so it is the one `builder` picks.
            let mut config = rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(config)
        })
        .clone()
}

impl Upstream {
    /// `timeout` bounds the wait for the answer's head (the body then streams at the client's pace).
    pub fn new(connect_timeout: Duration, timeout: Duration) -> Self {
        Self {
            pool: Arc::new(Pool {
                idle: Mutex::new(HashMap::default()),
                max_idle_per_origin: 1024,
                idle_timeout: Duration::from_secs(60),
            }),
            connect_timeout,
            timeout,
        }
    }

    async fn connect(&self, origin: &Origin) -> Result<Conn, UpstreamError> {
        let connecting = async {
            let tcp = TcpStream::connect((origin.connect_host.as_str(), origin.port))
                .await
                .map_err(|e| failed("connect", e))?;
            let _ = tcp.set_nodelay(true);
            let io = if origin.tls {
                let name = rustls::pki_types::ServerName::try_from(origin.connect_host.clone())
                    .map_err(|e| failed("TLS server name", e))?;
                let tls = tokio_rustls::TlsConnector::from(tls_config())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| failed("TLS handshake", platform::telemetry::error_chain(&e)))?;
                Io::Tls(Box::new(tls))
            } else {
                Io::Plain(tcp)
            };
            Ok(Conn {
                io,
                buf: BytesMut::new(),
                idle_since: Instant::now(),
            })
        };
        match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamError::Timeout),
        }
    }

    /// Sends a request for `target` (path and query) and waits for the answer's head. `headers` are sent as they
    /// are (with `Host`), except for the body's framing, which this client decides.
    pub async fn send(
        &self,
        origin: &Origin,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Response<Body>, UpstreamError> {
        match tokio::time::timeout(
            self.timeout,
            self.exchange(origin, method, target, headers, body),
        )
        .await
        {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(result) => result,
        }
    }

    async fn exchange(
        &self,
        origin: &Origin,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        mut body: Body,
    ) -> Result<Response<Body>, UpstreamError> {
        let empty = body.is_end_stream();
        let length = body.size_hint().exact();
        let chunked = !empty && length.is_none();
        // Sized for the whole head, so it is written without growing (a bearer token alone is ~600 bytes).
        let fields: usize = headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        let mut head = Vec::with_capacity(target.len() + fields + 64);
        head.extend_from_slice(method.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(target.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\n");
        let framing_given =
            headers.contains_key(CONTENT_LENGTH) || headers.contains_key(TRANSFER_ENCODING);
        codec::write_headers(&mut head, headers, |name| {
            name == CONTENT_LENGTH || name == TRANSFER_ENCODING
        });
        if chunked {
            head.extend_from_slice(b"transfer-encoding: chunked\r\n");
        } else if !empty || framing_given {
            head.extend_from_slice(b"content-length: ");
            codec::write_decimal(&mut head, length.unwrap_or(0));
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        // A small body that is already here leaves with the head.
        let mut pending: Option<Bytes> = None;
        let mut coalesced = 0u64;
        if !empty {
            if let Poll::Ready(frame) =
                std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await
            {
                match frame {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            if chunked && !data.is_empty() {
                                codec::write_chunk_size(&mut head, data.len());
                                head.extend_from_slice(&data);
                                head.extend_from_slice(b"\r\n");
                            } else if data.len() <= COALESCE {
                                coalesced = data.len() as u64;
                                head.extend_from_slice(&data);
                            } else {
                                pending = Some(data);
                            }
                        }
                    }
                    Some(Err(err)) => return Err(failed("request body", err)),
                    None => {}
                }
            }
        }
        let complete = empty || body.is_end_stream() && pending.is_none();
        if complete && !chunked && length.is_some_and(|n| n != coalesced) && !empty {
            return Err(UpstreamError::Failed(
                "request body does not match its Content-Length".into(),
            ));
        }
        if complete && chunked {
            head.extend_from_slice(codec::LAST_CHUNK);
        }
        // Retrying is safe only when nothing of the request can have been acted on: a reused connection the
        // upstream closed as we wrote (its keep-alive timeout), a request whose whole body is still ours, and a
        // method that may be repeated.
        let repeatable = complete
            && matches!(
                *method,
                Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
            );
        let head_request = *method == Method::HEAD;
        let mut attempt = 0;
        loop {
            attempt += 1;
            // A retry goes to a new connection: the other idle ones may have been closed by the same restart.
            let pooled = if attempt == 1 {
                self.pool.take(&origin.key)
            } else {
                None
            };
            let (mut conn, reused) = match pooled {
                Some(conn) => (conn, true),
                // Boxed: connecting (TLS included) is rare and its future is large; every request carries the
                // space of what it awaits.
                None => (Box::pin(self.connect(origin)).await?, false),
            };
            let retry = reused && repeatable && attempt == 1;
            if let Err(err) = conn.io.write_all(&head).await {
                if retry {
                    continue;
                }
                return Err(failed("sending the request", err));
            }
            if !complete {
                let pending = pending.take();
                send_body(&mut conn.io, pending, coalesced, &mut body, chunked, length).await?;
            }
            if origin.tls {
                conn.io
                    .flush()
                    .await
                    .map_err(|e| failed("sending the request", e))?;
            }
            match read_head(&mut conn).await {
                Ok(parts) => return self.answer(origin, conn, parts, head_request),
                Err(ReadError::ClosedEarly) if retry => continue,
                Err(ReadError::ClosedEarly) => {
                    return Err(UpstreamError::Failed(
                        "the upstream closed the connection without answering".into(),
                    ))
                }
                Err(ReadError::Failed(err)) => return Err(err),
            }
        }
    }

    /// The answer with its body; the connection goes back to the pool once the body is read.
    fn answer(
        &self,
        origin: &Origin,
        conn: Conn,
        parts: http::response::Parts,
        head_request: bool,
    ) -> Result<Response<Body>, UpstreamError> {
        let framing = codec::response_framing(parts.status, head_request, &parts.headers)
            .map_err(|e| failed("answer", e))?;
        let keep =
            framing != Framing::UntilClose && codec::keeps_alive(parts.version, &parts.headers);
        let mut body = UpstreamBody {
            conn: Some(conn),
            decoder: BodyDecoder::new(framing),
            pool: self.pool.clone(),
            key: origin.key.clone(),
            keep,
        };
        let body = if body.decoder.is_done() {
            body.release();
            Body::empty()
        } else {
            Body::new(body)
        };
        Ok(Response::from_parts(parts, body))
    }
}

/// Sends the rest of the body after the `already` bytes that left with the head.
async fn send_body(
    io: &mut Io,
    mut pending: Option<Bytes>,
    already: u64,
    body: &mut Body,
    chunked: bool,
    length: Option<u64>,
) -> Result<(), UpstreamError> {
    let mut sent = already;
    let mut size_line = Vec::with_capacity(20);
    loop {
        let data = match pending.take() {
            Some(data) => data,
            None => match body.frame().await {
                None => break,
                Some(Err(err)) => return Err(failed("request body", err)),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_) => continue,
                },
            },
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        if length.is_some_and(|len| sent > len) {
            return Err(UpstreamError::Failed(
                "request body longer than its Content-Length".into(),
            ));
        }
        let written = if chunked {
            size_line.clear();
            codec::write_chunk_size(&mut size_line, data.len());
            let mut out = (&size_line[..]).chain(&data[..]).chain(&b"\r\n"[..]);
            io.write_all_buf(&mut out).await
        } else {
            io.write_all(&data).await
        };
        written.map_err(|e| failed("sending the request body", e))?;
    }
    if length.is_some_and(|len| sent != len) {
        return Err(UpstreamError::Failed(
            "request body shorter than its Content-Length".into(),
        ));
    }
    if chunked {
        io.write_all(codec::LAST_CHUNK)
            .await
            .map_err(|e| failed("sending the request body", e))?;
    }
    Ok(())
}

enum ReadError {
    /// The connection ended before any byte of an answer.
    ClosedEarly,
    Failed(UpstreamError),
}

/// Reads the answer's head, skipping interim (1xx) answers.
async fn read_head(conn: &mut Conn) -> Result<http::response::Parts, ReadError> {
    use tokio::io::AsyncReadExt;
    let mut received = false;
    loop {
        match codec::parse_response(&mut conn.buf, MAX_ANSWER_HEAD) {
            Ok(Some(parts)) if parts.status == StatusCode::SWITCHING_PROTOCOLS => {
                return Err(ReadError::Failed(UpstreamError::Failed(
                    "the upstream switched protocols, which the gateway does not proxy".into(),
                )))
            }
            Ok(Some(parts)) if parts.status.is_informational() => continue,
            Ok(Some(parts)) => return Ok(parts),
            Ok(None) => {}
            Err(err) => return Err(ReadError::Failed(failed("answer head", format!("{err:?}")))),
        }
        if conn.buf.capacity() - conn.buf.len() < codec::HEAD_CHUNK / 4 {
            conn.buf.reserve(codec::HEAD_CHUNK);
        }
        match conn.io.read_buf(&mut conn.buf).await {
            Ok(0) | Err(_) if !received => return Err(ReadError::ClosedEarly),
            Ok(0) => {
                return Err(ReadError::Failed(UpstreamError::Failed(
                    "the upstream closed the connection in the answer's head".into(),
                )))
            }
            Ok(_) => received = true,
            Err(err) => return Err(ReadError::Failed(failed("reading the answer", err))),
        }
    }
}

/// An answer's body, read from its connection as the client takes it.
struct UpstreamBody {
    /// `None` once the body is over (the connection is then back in the pool, or closed).
    conn: Option<Conn>,
    decoder: BodyDecoder,
    pool: Arc<Pool>,
    key: Arc<str>,
    keep: bool,
}

impl UpstreamBody {
    fn release(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.keep && conn.buf.is_empty() {
                self.pool.put(&self.key, conn);
            }
        }
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        let next = ready!(codec::poll_body(
            cx,
            Pin::new(&mut conn.io),
            &mut conn.buf,
            &mut this.decoder
        ));
        match next {
            Ok(Some(data)) => {
                if this.decoder.is_done() {
                    this.release();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Ok(None) => {
                this.release();
                Poll::Ready(None)
            }
            Err(err) => {
                this.conn = None;
                Poll::Ready(Some(Err(err)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_keep_explicit_ports_and_refuse_other_schemes() {
        let origin = Origin::of(&url::Url::parse("http://up.test:8081/base").unwrap()).unwrap();
        assert_eq!(origin.host, "up.test:8081");
        assert_eq!(
            (origin.connect_host.as_str(), origin.port),
            ("up.test", 8081)
        );
        let tls = Origin::of(&url::Url::parse("https://api.example.com").unwrap()).unwrap();
        assert_eq!(tls.host, "api.example.com");
        assert_eq!(tls.port, 443);
        assert!(tls.tls);
        let v6 = Origin::of(&url::Url::parse("http://[::1]:9000/").unwrap()).unwrap();
        assert_eq!(v6.host, "[::1]:9000");
        assert_eq!(v6.connect_host, "::1");
        assert!(Origin::of(&url::Url::parse("ftp://files.example.com").unwrap()).is_none());
    }
}
