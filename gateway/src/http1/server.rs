//! The proxy's HTTP/1.1 server: one task per client connection reads each request head into a small reused buffer,
//! hands the request to the proxy and writes the answer, head and small body in one write; request bodies stream to
//! the proxy through a one-slot channel and answer bodies stream back, so memory stays bounded whatever their size.

use super::codec::{self, BodyDecoder, Framing, HeadError};
use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, EXPECT, TRANSFER_ENCODING};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};

/// Requests whose header section is larger than this get 431 (nginx's `large_client_header_buffers 4 8k`).
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// Answer bytes gathered before a write: small bodies leave with their head in one system call.
const COALESCE: usize = 16 * 1024;
/// How long a closing connection keeps reading what the client still sends, so it gets the answer and not a reset.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;

/// A proxy thread's connections are told to finish through this: idle ones close at once, busy ones after the
/// answer they are writing.
#[derive(Default)]
pub struct Lifecycle {
    closing: AtomicBool,
    notify: Notify,
}

impl Lifecycle {
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }
}

/// What the head read ended with (a request is the usual outcome, so it is not boxed).
#[allow(clippy::large_enum_variant)]
enum Head {
    Request(http::request::Parts),
    /// The client went away, stayed silent too long, or the gateway is closing.
    Closed,
    Refuse(StatusCode),
}

/// Serves one client connection until it closes. `handler` answers each request; a connection that completes no
/// request head for `header_timeout` (idle keep-alive time included) is closed, at most twice that after its last
/// request.
pub async fn serve_connection<S, H, F>(
    mut stream: S,
    mut handler: H,
    life: Arc<Lifecycle>,
    header_timeout: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    H: FnMut(Request<Body>) -> F,
    F: Future<Output = Response<Body>>,
{
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    // One timer per connection, checked for progress when it fires (nginx's lazy timers): arming one per request
    // would cost a timer-wheel insertion and removal each time.
    let mut timer = HeadTimer {
        sleep: Box::pin(tokio::time::sleep(header_timeout)),
        period: header_timeout,
        heads: 0,
        heads_at_last_check: 0,
    };
    loop {
        let parts = match read_head(&mut stream, &mut buf, &life, &mut timer).await {
            Head::Request(parts) => parts,
            Head::Closed => return,
            Head::Refuse(status) => {
                refuse(&mut stream, &mut out, status).await;
                linger(&mut stream, &mut buf).await;
                return;
            }
        };
        let version = parts.version;
        let head_request = parts.method == Method::HEAD;
        let framing = match codec::request_framing(&parts.headers, version) {
            Ok(framing) if parts.method != Method::CONNECT => framing,
            _ => {
                refuse(&mut stream, &mut out, StatusCode::BAD_REQUEST).await;
                linger(&mut stream, &mut buf).await;
                return;
            }
        };
        let mut keep = codec::keeps_alive(version, &parts.headers);
        let (mut parts, mut body_complete) = (parts, framing == Framing::Empty);
        // The gateway reads the body itself and sends it upstream with its own framing, so the expectation is
        // answered here and not passed on.
        if let Some(expect) = parts.headers.remove(EXPECT) {
            if !body_complete
                && version == Version::HTTP_11
                && expect.as_bytes().eq_ignore_ascii_case(b"100-continue")
                && stream
                    .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                    .await
                    .is_err()
            {
                return;
            }
        }
        let response = if body_complete {
            handler(Request::from_parts(parts, Body::empty())).await
        } else {
            let mut decoder = BodyDecoder::new(framing);
            let (tx, rx) = mpsc::channel(1);
            let body = Body::new(ChannelBody {
                rx,
                remaining: decoder.remaining(),
            });
            let stream = &mut stream;
            let buf = &mut buf;
            let mut pump = pin!(async move {
                loop {
                    let next = poll_fn(|cx| {
                        codec::poll_body(cx, Pin::new(&mut *stream), buf, &mut decoder)
                    })
                    .await;
                    match next {
                        Ok(Some(data)) => {
                            if tx.send(Ok(data)).await.is_err() {
                                return false;
                            }
                        }
                        Ok(None) => return true,
                        Err(err) => {
                            let _ = tx.send(Err(err)).await;
                            return false;
                        }
                    }
                }
            });
            let mut answer = pin!(handler(Request::from_parts(parts, body)));
            let mut pumped = None;
            let response = poll_fn(|cx| {
                if pumped.is_none() {
                    if let Poll::Ready(done) = pump.as_mut().poll(cx) {
                        pumped = Some(done);
                    }
                }
                answer.as_mut().poll(cx)
            })
            .await;
            body_complete = pumped == Some(true);
            response
        };
        // A body the proxy did not read leaves the connection in an unknown place: it closes after this answer.
        keep &= body_complete && !life.is_closing();
        let written =
            write_response(&mut stream, &mut out, response, version, head_request, keep).await;
        match written {
            Some(true) => {}
            Some(false) => {
                if !body_complete {
                    linger(&mut stream, &mut buf).await;
                } else {
                    let _ = stream.shutdown().await;
                }
                return;
            }
            None => return,
        }
    }
}

/// The connection's head timeout.
struct HeadTimer {
    sleep: Pin<Box<tokio::time::Sleep>>,
    period: Duration,
    heads: u64,
    heads_at_last_check: u64,
}

impl HeadTimer {
    /// The timer fired: true when a head arrived since the last time (the timer is then armed again).
    fn progressed(&mut self) -> bool {
        if self.heads == self.heads_at_last_check {
            return false;
        }
        self.heads_at_last_check = self.heads;
        let next = tokio::time::Instant::now() + self.period;
        self.sleep.as_mut().reset(next);
        true
    }
}

/// Reads until a complete request head is in `buf`.
async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    life: &Lifecycle,
    timer: &mut HeadTimer,
) -> Head {
    loop {
        match codec::parse_request(buf, MAX_HEADER_BYTES) {
            Ok(Some(parts)) => {
                timer.heads += 1;
                return Head::Request(parts);
            }
            Ok(None) => {}
            Err(HeadError::TooLarge) => {
                return Head::Refuse(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
            }
            Err(HeadError::Malformed(_)) => return Head::Refuse(StatusCode::BAD_REQUEST),
        }
        // The buffer is reused while it has room: reserving a full chunk every time would move or reallocate it.
        if buf.capacity() - buf.len() < codec::HEAD_CHUNK / 4 {
            buf.reserve(codec::HEAD_CHUNK);
        }
        let read = if buf.is_empty() {
            // Between requests: a closing gateway does not wait for the next one.
            let closing = life.notify.notified();
            let mut closing = pin!(closing);
            closing.as_mut().enable();
            if life.is_closing() {
                return Head::Closed;
            }
            tokio::select! {
                biased;
                read = stream.read_buf(buf) => read,
                () = &mut closing => return Head::Closed,
                () = timer.sleep.as_mut() => if timer.progressed() { continue } else { return Head::Closed },
            }
        } else {
            tokio::select! {
                biased;
                read = stream.read_buf(buf) => read,
                () = timer.sleep.as_mut() => if timer.progressed() { continue } else { return Head::Closed },
            }
        };
        match read {
            Ok(0) | Err(_) => return Head::Closed,
            Ok(_) => {}
        }
    }
}

/// An empty answer with `status` that closes the connection.
async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, out: &mut Vec<u8>, status: StatusCode) {
    out.clear();
    status_line(out, status);
    out.extend_from_slice(b"content-length: 0\r\n");
    date(out);
    out.extend_from_slice(b"connection: close\r\n\r\n");
    let _ = stream.write_all(out).await;
}

/// Closes our side, then reads and discards what the client still sends for a little while: closing a socket with
/// unread input sends a reset, which can destroy the answer before the client reads it.
async fn linger<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, buf: &mut BytesMut) {
    let _ = stream.shutdown().await;
    let _ = tokio::time::timeout(LINGER, async {
        let mut discarded = 0;
        while discarded < LINGER_BYTES {
            buf.clear();
            buf.reserve(codec::HEAD_CHUNK);
            match stream.read_buf(buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => discarded += n,
            }
        }
    })
    .await;
}

fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends a `date` header, formatted at most once a second per thread.
fn date(out: &mut Vec<u8>) {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second || cached.1.is_empty() {
            *cached = (second, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(cached.1.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}

/// Writes `response`. `Some(keep)` when it was written whole (`keep`: the connection serves another request);
/// `None` when the connection broke.
async fn write_response<S: AsyncWrite + Unpin>(
    stream: &mut S,
    out: &mut Vec<u8>,
    response: Response<Body>,
    version: Version,
    head_request: bool,
    keep: bool,
) -> Option<bool> {
    let (parts, mut body) = response.into_parts();
    let mut keep = keep;
    let no_body = head_request
        || parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    out.clear();
    status_line(out, parts.status);
    codec::write_headers(out, &parts.headers, |name| {
        name == CONNECTION || (!no_body && (name == CONTENT_LENGTH || name == TRANSFER_ENCODING))
    });
    let length = body.size_hint().exact();
    let mut chunked = false;
    if !no_body {
        match length {
            Some(n) => {
                out.extend_from_slice(b"content-length: ");
                codec::write_decimal(out, n);
                out.extend_from_slice(b"\r\n");
            }
            None if version == Version::HTTP_11 => {
                chunked = true;
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            }
            // An HTTP/1.0 client learns where the body ends when the connection closes.
            None => keep = false,
        }
    }
    if !parts.headers.contains_key(DATE) {
        date(out);
    }
    if !keep {
        out.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if no_body {
        return stream.write_all(out).await.ok().map(|()| keep);
    }
    let mut sent = 0u64;
    loop {
        // Bytes gathered so far leave as soon as the body has nothing more at hand.
        let polled = poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
        let frame = match polled {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if !out.is_empty() {
                    stream.write_all(out).await.ok()?;
                    out.clear();
                }
                poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            }
        };
        let data = match frame {
            None => break,
            Some(Err(err)) => {
                // The answer is cut short: the client must see a broken body, not a complete one.
                tracing::warn!(error = %err, "answer body failed");
                let _ = stream.write_all(out).await;
                return None;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                _ => continue,
            },
        };
        sent += data.len() as u64;
        if length.is_some_and(|n| sent > n) {
            tracing::warn!("answer body longer than its length");
            let _ = stream.write_all(out).await;
            return None;
        }
        if chunked {
            codec::write_chunk_size(out, data.len());
        }
        if out.len() + data.len() <= COALESCE {
            out.extend_from_slice(&data);
        } else {
            stream.write_all(out).await.ok()?;
            out.clear();
            stream.write_all(&data).await.ok()?;
        }
        if chunked {
            out.extend_from_slice(b"\r\n");
        }
    }
    if length.is_some_and(|n| sent != n) {
        tracing::warn!("answer body shorter than its length");
        let _ = stream.write_all(out).await;
        return None;
    }
    if chunked {
        out.extend_from_slice(codec::LAST_CHUNK);
    }
    if !out.is_empty() {
        stream.write_all(out).await.ok()?;
    }
    Some(keep)
}

/// A request body arriving from the connection's task.
struct ChannelBody {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    remaining: Option<u64>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match std::task::ready!(self.rx.poll_recv(cx)) {
            Some(Ok(data)) => {
                if let Some(remaining) = self.remaining.as_mut() {
                    *remaining = remaining.saturating_sub(data.len() as u64);
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Some(Err(err)) => Poll::Ready(Some(Err(err))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spawn(
        header_timeout: Duration,
    ) -> (
        tokio::io::DuplexStream,
        Arc<Lifecycle>,
        tokio::task::JoinHandle<()>,
    ) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let life = Arc::new(Lifecycle::default());
        let task = tokio::spawn(serve_connection(
            server,
            |_req| async { Response::new(Body::from("ok")) },
            life.clone(),
            header_timeout,
        ));
        (client, life, task)
    }

    /// Reads one answer with a two-byte body.
    async fn answer(client: &mut tokio::io::DuplexStream) -> String {
        let mut got = Vec::new();
        while !got.ends_with(b"\r\n\r\nok") {
            let mut chunk = [0u8; 1024];
            let n = client.read(&mut chunk).await.unwrap();
            assert_ne!(n, 0, "closed before the answer: {got:?}");
            got.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8(got).unwrap()
    }

    /// The server closes the connection (within a generous deadline).
    async fn assert_closed(client: &mut tokio::io::DuplexStream) {
        let mut rest = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut rest))
            .await
            .expect("the idle connection was not closed");
        assert_eq!(read.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_connection_that_goes_silent_is_closed_after_the_head_timeout() {
        let (mut client, _life, task) = spawn(Duration::from_millis(100));
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let first = answer(&mut client).await;
        assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{first}");
        assert!(first.contains("content-length: 2\r\n"), "{first}");
        // Silent from now on: closed within two periods (the first check sees the request above as progress).
        assert_closed(&mut client).await;
        task.await.unwrap();
    }

    #[tokio::test]
    async fn closing_ends_idle_connections_at_once_and_busy_ones_after_their_answer() {
        let (mut client, life, task) = spawn(Duration::from_secs(3600));
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        answer(&mut client).await;
        life.close();
        assert_closed(&mut client).await;
        task.await.unwrap();

        // A request in flight when the gateway closes gets its answer, marked as the last one.
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let life = Arc::new(Lifecycle::default());
        let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let mut hooks = Some((started_tx, released));
        let task = tokio::spawn(serve_connection(
            server,
            move |_req| {
                let (started_tx, released) = hooks.take().expect("one request");
                async move {
                    let _ = started_tx.send(());
                    let _ = released.await;
                    Response::new(Body::from("ok"))
                }
            },
            life.clone(),
            Duration::from_secs(3600),
        ));
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        started.await.unwrap();
        life.close();
        release.send(()).unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        let got = String::from_utf8(got).unwrap();
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert!(got.contains("connection: close\r\n"), "{got}");
        assert!(got.ends_with("\r\n\r\nok"), "{got}");
        task.await.unwrap();
    }
}
