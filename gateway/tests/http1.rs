//! The gateway's own HTTP/1.1 layer end to end over real sockets: request and answer body framing (length, chunked,
//! large bodies), HEAD, pipelining, `Expect: 100-continue`, HTTP/1.0, upstream keep-alive reuse and recovery, cut
//! answers and ambiguous request framing, against raw TCP upstreams that write exact bytes.

use gateway::Config;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod support;
use support::*;

/// How long any single socket read in these tests may wait.
const READ_DEADLINE: Duration = Duration::from_secs(5);

/// A request as the raw upstream received it, body decoded from whatever framing it came with.
#[derive(Clone, Debug)]
struct Seen {
    /// Which accepted connection (0, 1, ...) it came on.
    conn: usize,
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// What the raw upstream writes back: exact bytes, then whether it closes the connection.
struct Reply {
    bytes: Vec<u8>,
    close: bool,
}

/// A `200` with a `content-length` body on a connection that stays open.
fn ok(body: &[u8]) -> Reply {
    let mut bytes =
        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
    bytes.extend_from_slice(body);
    Reply {
        bytes,
        close: false,
    }
}

/// A raw TCP upstream: records every request and every accepted connection.
struct RawUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    accepted: Arc<AtomicUsize>,
}

impl RawUpstream {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn raw_upstream<F>(reply: F) -> RawUpstream
where
    F: Fn(&Seen) -> Reply + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let accepted = Arc::new(AtomicUsize::new(0));
    let reply = Arc::new(reply);
    {
        let (seen, accepted) = (seen.clone(), accepted.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let conn = accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_raw(stream, conn, reply.clone(), seen.clone()));
            }
        });
    }
    RawUpstream {
        addr,
        seen,
        accepted,
    }
}

async fn serve_raw<F>(
    mut stream: TcpStream,
    conn: usize,
    reply: Arc<F>,
    seen: Arc<Mutex<Vec<Seen>>>,
) where
    F: Fn(&Seen) -> Reply + Send + Sync + 'static,
{
    let mut buf = Vec::new();
    while let Some(request) = read_request(&mut stream, &mut buf, conn).await {
        let answer = reply(&request);
        // Recorded before answering, so a test that has its answer also sees the request.
        seen.lock().unwrap().push(request);
        if stream.write_all(&answer.bytes).await.is_err() {
            return;
        }
        if answer.close {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

/// Reads more bytes into `buf`; 0 at the end of the stream.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    let mut chunk = vec![0u8; 64 * 1024];
    let n = stream.read(&mut chunk).await.unwrap_or(0);
    buf.extend_from_slice(&chunk[..n]);
    n
}

/// The same, for the client side: a silent gateway fails the test instead of hanging it.
async fn fill_client(stream: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    tokio::time::timeout(READ_DEADLINE, fill(stream, buf))
        .await
        .expect("the gateway answered within the deadline")
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Decodes a complete chunked body at the front of `data`: the body and how many bytes it took, `None` while
/// incomplete. Panics on bytes that are not chunked framing.
fn dechunk(data: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let end = at + find(&data[at..], b"\r\n")?;
        let line = std::str::from_utf8(&data[at..end]).expect("a chunk-size line");
        let digits = line.split(';').next().unwrap().trim();
        let size = usize::from_str_radix(digits, 16)
            .unwrap_or_else(|_| panic!("bad chunk-size line {line:?}"));
        at = end + 2;
        if size == 0 {
            // Trailer lines up to an empty one.
            loop {
                let end = at + find(&data[at..], b"\r\n")?;
                let empty = end == at;
                at = end + 2;
                if empty {
                    return Some((body, at));
                }
            }
        }
        if data.len() < at + size + 2 {
            return None;
        }
        body.extend_from_slice(&data[at..at + size]);
        assert_eq!(
            &data[at + size..at + size + 2],
            b"\r\n",
            "chunk data ends with CRLF"
        );
        at += size + 2;
    }
}

/// One request off a connection (body decoded), `None` when it closes first.
/// Header fields as lower-cased names and lossy text values.
fn owned_headers(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>, conn: usize) -> Option<Seen> {
    let (method, target, headers, len) = loop {
        let mut raw = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut raw);
        if let httparse::Status::Complete(len) = request.parse(buf).expect("a valid request head") {
            let headers = owned_headers(request.headers);
            break (
                request.method.unwrap().to_owned(),
                request.path.unwrap().to_owned(),
                headers,
                len,
            );
        }
        if fill(stream, buf).await == 0 {
            return None;
        }
    };
    buf.drain(..len);
    let chunked = header(&headers, "transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        loop {
            if let Some((body, used)) = dechunk(buf) {
                buf.drain(..used);
                break body;
            }
            if fill(stream, buf).await == 0 {
                return None;
            }
        }
    } else {
        let length: usize = header(&headers, "content-length").map_or(0, |v| v.parse().unwrap());
        while buf.len() < length {
            if fill(stream, buf).await == 0 {
                return None;
            }
        }
        buf.drain(..length).collect()
    };
    Some(Seen {
        conn,
        method,
        target,
        headers,
        body,
    })
}

/// An answer as a raw client read it.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// Reads one answer off a client connection; bytes after it stay in `buf`.
async fn read_answer(stream: &mut TcpStream, buf: &mut Vec<u8>, head_request: bool) -> Answer {
    let (status, headers, len) = loop {
        let mut raw = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut raw);
        let parsed = response.parse(buf).unwrap_or_else(|e| {
            panic!(
                "not an answer head ({e}): {:?}",
                String::from_utf8_lossy(buf)
            )
        });
        if let httparse::Status::Complete(len) = parsed {
            let headers = owned_headers(response.headers);
            break (response.code.unwrap(), headers, len);
        }
        assert!(
            fill_client(stream, buf).await > 0,
            "the connection closed in an answer head: {:?}",
            String::from_utf8_lossy(buf)
        );
    };
    buf.drain(..len);
    let no_body = head_request || (100..200).contains(&status) || status == 204 || status == 304;
    let chunked = header(&headers, "transfer-encoding").is_some_and(|te| te.contains("chunked"));
    let length = header(&headers, "content-length").map(|v| v.parse::<usize>().unwrap());
    let body = if no_body {
        Vec::new()
    } else if chunked {
        loop {
            if let Some((body, used)) = dechunk(buf) {
                buf.drain(..used);
                break body;
            }
            assert!(
                fill_client(stream, buf).await > 0,
                "closed in a chunked body"
            );
        }
    } else if let Some(length) = length {
        while buf.len() < length {
            assert!(fill_client(stream, buf).await > 0, "closed in a body");
        }
        buf.drain(..length).collect()
    } else {
        while fill_client(stream, buf).await > 0 {}
        std::mem::take(buf)
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// Reads until the gateway closes the connection; fails the test if it stays open.
async fn read_to_eof(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    tokio::time::timeout(READ_DEADLINE, stream.read_to_end(&mut all))
        .await
        .expect("the gateway closed the connection")
        .expect("a clean close");
    all
}

/// A gateway whose one service (`api.test`) sends every method and path to `upstream`'s `/base`.
async fn gateway_to(upstream: SocketAddr) -> (Stand, SocketAddr) {
    let (stand, backend, _echo) = stand_ins().await;
    let rules = json!({"proxy_rules": [
        {"http_method": "ANY", "pattern": "/", "metric_system_name": "hits", "delta": 1}
    ]});
    let (_state, gw) = gateway(
        Config::default(),
        json!({"services": [service(backend, upstream, rules)]}),
    )
    .await;
    (stand, gw)
}

async fn connect(gw: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(gw).await.unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Deterministic bytes without short periods, so misplaced or repeated pieces do not compare equal.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Compares large bodies without printing them.
fn assert_same_bytes(actual: &[u8], expected: &[u8], what: &str) {
    let first_difference = actual.iter().zip(expected).position(|(a, b)| a != b);
    assert!(
        actual.len() == expected.len() && first_difference.is_none(),
        "{what}: {} bytes instead of {}, first difference at {first_difference:?}",
        actual.len(),
        expected.len()
    );
}

/// Checks what the raw upstream received for a POST of `body` with a `Content-Length`.
fn assert_length_body_received(seen: &Seen, body: &[u8]) {
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.target, "/base/upload?user_key=good-1");
    assert_eq!(
        seen.header("content-length"),
        Some(body.len().to_string().as_str()),
        "{:?}",
        seen.headers
    );
    assert_eq!(seen.header("transfer-encoding"), None);
    assert_same_bytes(&seen.body, body, "the body upstream received");
}

#[tokio::test]
async fn large_request_body_with_length_reaches_upstream_intact() {
    let up = raw_upstream(|_| ok(b"stored")).await;
    let (_stand, gw) = gateway_to(up.addr).await;
    let body = pattern(3 * 1024 * 1024, 1);
    let r = client()
        .post(format!("http://{gw}/upload?user_key=good-1"))
        .header("host", "api.test")
        .header("content-type", "application/octet-stream")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "stored");
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_length_body_received(&seen[0], &body);

    // The same over a raw connection whose first write carries the head and the body's first kilobyte, so the
    // gateway has a small first piece at hand when it writes the upstream request, and the rest comes after.
    let mut stream = connect(gw).await;
    let mut first = format!(
        "POST /upload?user_key=good-1 HTTP/1.1\r\nHost: api.test\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    first.extend_from_slice(&body[..1024]);
    stream.write_all(&first).await.unwrap();
    stream.write_all(&body[1024..]).await.unwrap();
    let mut buf = Vec::new();
    let answer = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, b"stored");
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert_length_body_received(&seen[1], &body);
}

#[tokio::test]
async fn chunked_request_body_reaches_upstream_intact() {
    let up = raw_upstream(|_| ok(b"stored")).await;
    let (_stand, gw) = gateway_to(up.addr).await;
    let sizes = [1usize, 100, 4096, 70_000, 33_333, 7];
    let mut expected = Vec::new();
    let mut stream = connect(gw).await;
    stream
        .write_all(
            b"POST /upload?user_key=good-1 HTTP/1.1\r\nHost: api.test\r\n\
              Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .await
        .unwrap();
    for (i, size) in sizes.into_iter().enumerate() {
        let data = pattern(size, i as u64 + 10);
        // A chunk extension on one of them, which the gateway must ignore.
        let ext = if i == 2 { ";name=value" } else { "" };
        let mut chunk = format!("{size:x}{ext}\r\n").into_bytes();
        chunk.extend_from_slice(&data);
        chunk.extend_from_slice(b"\r\n");
        stream.write_all(&chunk).await.unwrap();
        expected.extend_from_slice(&data);
    }
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let answer = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, b"stored");
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    let framing = (
        seen[0].header("transfer-encoding"),
        seen[0].header("content-length"),
    );
    let total = expected.len().to_string();
    assert!(
        matches!(framing, (Some("chunked"), None)) || framing == (None, Some(total.as_str())),
        "upstream framing: {framing:?}"
    );
    assert_same_bytes(&seen[0].body, &expected, "the body upstream received");
}

#[tokio::test]
async fn large_answers_with_length_and_chunked_arrive_intact() {
    let big = Arc::new(pattern(5 * 1024 * 1024, 2));
    let up = {
        let big = big.clone();
        raw_upstream(move |req| {
            if req.target.starts_with("/base/length") {
                return ok(&big);
            }
            let mut bytes = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
            // Chunks of uneven sizes, from one byte to 256 KiB.
            let mut at = 0;
            let mut size = 1;
            while at < big.len() {
                let take = size.min(big.len() - at);
                bytes.extend_from_slice(format!("{take:x}\r\n").as_bytes());
                bytes.extend_from_slice(&big[at..at + take]);
                bytes.extend_from_slice(b"\r\n");
                at += take;
                size = (size * 7 + 3) % (256 * 1024) + 1;
            }
            bytes.extend_from_slice(b"0\r\n\r\n");
            Reply {
                bytes,
                close: false,
            }
        })
        .await
    };
    let (_stand, gw) = gateway_to(up.addr).await;

    let r = gw_get(gw, "/length?user_key=good-1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-length"],
        big.len().to_string().as_str(),
        "the length passes through"
    );
    let got = r.bytes().await.expect("a complete body");
    assert_same_bytes(&got, &big, "the answer with a length");

    let r = gw_get(gw, "/chunked?user_key=good-1").await;
    assert_eq!(r.status(), 200);
    let got = r.bytes().await.expect("a complete body");
    assert_same_bytes(&got, &big, "the chunked answer");
    assert_eq!(up.seen().len(), 2);
}

#[tokio::test]
async fn head_answers_keep_their_length_without_a_body() {
    let up = raw_upstream(|req| {
        if req.method == "HEAD" {
            Reply {
                bytes: b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\nx-kind: head\r\n\r\n".to_vec(),
                close: false,
            }
        } else {
            ok(b"after-head")
        }
    })
    .await;
    let (_stand, gw) = gateway_to(up.addr).await;
    let mut stream = connect(gw).await;
    let mut buf = Vec::new();
    stream
        .write_all(b"HEAD /thing?user_key=good-1 HTTP/1.1\r\nHost: api.test\r\n\r\n")
        .await
        .unwrap();
    let head = read_answer(&mut stream, &mut buf, true).await;
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("content-length"), Some("1234"), "{head:?}");
    assert_eq!(head.header("x-kind"), Some("head"));
    assert_eq!(head.header("transfer-encoding"), None, "{head:?}");
    assert_eq!(head.header("connection"), None, "kept alive: {head:?}");
    // Had the gateway written any body after the HEAD answer, the next answer would not parse.
    stream
        .write_all(b"GET /thing?user_key=good-1 HTTP/1.1\r\nHost: api.test\r\n\r\n")
        .await
        .unwrap();
    let next = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!(next.status, 200, "{next:?}");
    assert_eq!(next.body, b"after-head");
    assert!(
        buf.is_empty(),
        "stray bytes: {:?}",
        String::from_utf8_lossy(&buf)
    );
    let methods: Vec<String> = up.seen().into_iter().map(|s| s.method).collect();
    assert_eq!(methods, ["HEAD", "GET"]);
}

#[tokio::test]
async fn pipelined_requests_get_answers_in_order() {
    let up = raw_upstream(|req| ok(req.target.as_bytes())).await;
    let (_stand, gw) = gateway_to(up.addr).await;
    let mut stream = connect(gw).await;
    stream
        .write_all(
            b"GET /first?user_key=good-1 HTTP/1.1\r\nHost: api.test\r\n\r\n\
              GET /second?user_key=good-1 HTTP/1.1\r\nHost: api.test\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = Vec::new();
    let first = read_answer(&mut stream, &mut buf, false).await;
    let second = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!((first.status, second.status), (200, 200));
    assert_eq!(
        String::from_utf8_lossy(&first.body),
        "/base/first?user_key=good-1"
    );
    assert_eq!(
        String::from_utf8_lossy(&second.body),
        "/base/second?user_key=good-1"
    );
    assert_eq!(up.seen().len(), 2);
}

#[tokio::test]
async fn expect_100_continue_gets_an_interim_answer_before_the_body() {
    let up = raw_upstream(|_| ok(b"stored")).await;
    let (_stand, gw) = gateway_to(up.addr).await;
    let mut stream = connect(gw).await;
    stream
        .write_all(
            b"POST /upload?user_key=good-1 HTTP/1.1\r\nHost: api.test\r\n\
              Content-Type: application/octet-stream\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = Vec::new();
    // Nothing of the body has been sent: the gateway must answer 100 first, or this waits until the deadline.
    let interim = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!(interim.status, 100, "{interim:?}");
    assert!(up.seen().is_empty());
    stream.write_all(b"hello world").await.unwrap();
    let last = read_answer(&mut stream, &mut buf, false).await;
    assert_eq!(last.status, 200, "{last:?}");
    assert_eq!(last.body, b"stored");
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, b"hello world");
    assert_eq!(
        seen[0].header("expect"),
        None,
        "the gateway answered the expectation itself"
    );
}

#[tokio::test]
async fn http10_requests_without_keep_alive_are_answered_then_closed() {
    let up = raw_upstream(|_| ok(b"old client")).await;
    let (_stand, gw) = gateway_to(up.addr).await;
    let mut stream = connect(gw).await;
    stream
        .write_all(b"GET /old?user_key=good-1 HTTP/1.0\r\nHost: api.test\r\n\r\n")
        .await
        .unwrap();
    let all = read_to_eof(&mut stream).await;
    let mut buf = all.clone();
    let mut raw = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut raw);
    let len = match response.parse(&buf).unwrap() {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => panic!("cut answer: {:?}", String::from_utf8_lossy(&all)),
    };
    assert_eq!(
        response.code,
        Some(200),
        "{:?}",
        String::from_utf8_lossy(&all)
    );
    let no_chunked = response
        .headers
        .iter()
        .all(|h| !h.name.eq_ignore_ascii_case("transfer-encoding"));
    assert!(no_chunked, "no chunked answers to HTTP/1.0 clients");
    assert_eq!(&buf.split_off(len)[..], b"old client");
}

#[tokio::test]
async fn upstream_keep_alive_connections_are_reused() {
    let up = raw_upstream(|req| ok(req.target.as_bytes())).await;
    let (_stand, gw) = gateway_to(up.addr).await;
    for i in 0..5 {
        let r = gw_get(gw, &format!("/n/{i}?user_key=good-1")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.text().await.unwrap(),
            format!("/base/n/{i}?user_key=good-1")
        );
    }
    let conns: Vec<usize> = up.seen().into_iter().map(|s| s.conn).collect();
    assert_eq!(
        conns,
        [0, 0, 0, 0, 0],
        "every request on the first connection"
    );
    assert_eq!(up.accepted(), 1);
}

#[tokio::test]
async fn upstream_closing_idle_connections_does_not_fail_the_next_request() {
    // Keep-alive answers (no `connection: close`), after which the upstream closes anyway, as an upstream whose
    // keep-alive timeout is very short would.
    let up = raw_upstream(|req| Reply {
        close: true,
        ..ok(req.target.as_bytes())
    })
    .await;
    let (_stand, gw) = gateway_to(up.addr).await;
    for i in 0..3 {
        let r = gw_get(gw, &format!("/n/{i}?user_key=good-1")).await;
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(
            r.text().await.unwrap(),
            format!("/base/n/{i}?user_key=good-1")
        );
    }
    let conns: Vec<usize> = up.seen().into_iter().map(|s| s.conn).collect();
    assert_eq!(conns, [0, 1, 2], "each request on a fresh connection");
}

#[tokio::test]
async fn cut_upstream_answers_are_not_passed_as_complete() {
    let up = raw_upstream(|req| {
        if req.target.starts_with("/base/cut-chunked") {
            // One chunk of ten bytes, then the connection closes before the last chunk.
            let bytes = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\na\r\n0123456789\r\n"
                .to_vec();
            Reply { bytes, close: true }
        } else if req.target.starts_with("/base/cut") {
            let mut bytes = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n".to_vec();
            bytes.extend_from_slice(b"0123456789");
            Reply { bytes, close: true }
        } else {
            ok(b"whole")
        }
    })
    .await;
    let (_stand, gw) = gateway_to(up.addr).await;
    for path in ["/cut", "/cut-chunked"] {
        let r = gw_get(gw, &format!("{path}?user_key=good-1")).await;
        // The head may already say 200; the body must not arrive as a complete one.
        if r.status() == 200 {
            let body = tokio::time::timeout(READ_DEADLINE, r.bytes())
                .await
                .unwrap_or_else(|_| {
                    panic!("{path}: the gateway neither finished nor cut the body")
                });
            assert!(
                body.is_err(),
                "{path}: a cut body arrived as complete: {body:?}"
            );
        }
        // Over a raw connection: the gateway closes without a complete answer.
        let mut stream = connect(gw).await;
        stream
            .write_all(
                format!("GET {path}?user_key=good-1 HTTP/1.1\r\nHost: api.test\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
        let all = read_to_eof(&mut stream).await;
        let mut raw = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut raw);
        if let Ok(httparse::Status::Complete(len)) = response.parse(&all) {
            if response.code == Some(200) {
                let length = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map(|h| {
                        std::str::from_utf8(h.value)
                            .unwrap()
                            .parse::<usize>()
                            .unwrap()
                    });
                let chunked = response
                    .headers
                    .iter()
                    .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
                let body = &all[len..];
                assert!(
                    chunked && dechunk(body).is_none() || length.is_some_and(|n| body.len() < n),
                    "{path}: a complete answer for a cut body: {:?}",
                    String::from_utf8_lossy(&all)
                );
            }
        }
    }
    // And the gateway goes on serving.
    let r = gw_get(gw, "/fine?user_key=good-1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "whole");
}

#[tokio::test]
async fn both_length_and_chunked_framing_is_refused() {
    let up = raw_upstream(|_| ok(b"fine")).await;
    let (stand, gw) = gateway_to(up.addr).await;
    for request in [
        &b"POST /upload?user_key=good-1 HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5\r\n\
           Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
        &b"POST /upload?user_key=good-1 HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\
           Content-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
    ] {
        let mut stream = connect(gw).await;
        stream.write_all(request).await.unwrap();
        // Refused, and the connection closed: its bytes can no longer be trusted to frame a next request.
        let all = read_to_eof(&mut stream).await;
        let mut raw = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut raw);
        assert!(
            matches!(response.parse(&all), Ok(httparse::Status::Complete(_))),
            "{:?}",
            String::from_utf8_lossy(&all)
        );
        assert_eq!(response.code, Some(400), "{:?}", String::from_utf8_lossy(&all));
    }
    assert_eq!(up.accepted(), 0, "upstream was called");
    assert!(up.seen().is_empty());
    assert!(stand.calls.lock().unwrap().is_empty(), "backend was called");
    // Still serving.
    let r = gw_get(gw, "/fine?user_key=good-1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "fine");
}
