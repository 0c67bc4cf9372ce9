//! HTTP/1.1 message framing shared by the proxy's server and its upstream client: heads parsed into `http` types
//! without copying header values, body framing (length, chunked, until close) and the bytes written for heads and
//! chunks.

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::AsyncRead;

/// Header fields accepted in one head (more: 431 from the server, 502 from the client).
pub const MAX_HEADERS: usize = 100;
/// How much a body read asks the kernel for at a time.
pub const READ_CHUNK: usize = 16 * 1024;
/// How much a head read asks for: enough for almost every head, small for idle connections.
pub const HEAD_CHUNK: usize = 4 * 1024;
/// The longest chunk-size line or trailer section accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the sender closes the connection (responses only).
    UntilClose,
}

/// Why a head could not be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Larger than the limit, or too many fields.
    TooLarge,
    Malformed(&'static str),
}

/// Where one header field lies in the buffer being parsed.
#[derive(Clone, Copy, Default)]
struct Span {
    name: (usize, usize),
    value: (usize, usize),
}

fn span_of(base: *const u8, part: &[u8]) -> (usize, usize) {
    let start = part.as_ptr() as usize - base as usize;
    (start, start + part.len())
}

/// Fills a header map from spans into `head`; values share `head`'s bytes. `extra`: room for fields the proxy adds,
/// so the map does not grow (and stays small: a map of 16 slots or more is a large allocation for malloc).
fn header_map(head: &Bytes, spans: &[Span], extra: usize) -> Result<HeaderMap, HeadError> {
    let mut headers = HeaderMap::with_capacity(spans.len() + extra);
    for span in spans {
        let name = HeaderName::from_bytes(&head[span.name.0..span.name.1])
            .map_err(|_| HeadError::Malformed("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(span.value.0..span.value.1))
            .map_err(|_| HeadError::Malformed("invalid header value"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

fn version_of(minor: Option<u8>) -> Version {
    if minor == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    }
}

/// The length of a complete head, `None` while it is incomplete, or why it cannot be taken.
fn head_length(
    parsed: httparse::Result<usize>,
    buffered: usize,
    max_bytes: usize,
    malformed: &'static str,
) -> Result<Option<usize>, HeadError> {
    match parsed {
        Ok(httparse::Status::Complete(len)) if len > max_bytes => Err(HeadError::TooLarge),
        Ok(httparse::Status::Complete(len)) => Ok(Some(len)),
        Ok(httparse::Status::Partial) if buffered > max_bytes => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(_) => Err(HeadError::Malformed(malformed)),
    }
}

/// Where each parsed header lies relative to `base`, the start of the buffer.
fn record_spans(base: *const u8, headers: &[httparse::Header<'_>], spans: &mut [Span]) {
    for (span, header) in spans.iter_mut().zip(headers) {
        span.name = span_of(base, header.name.as_bytes());
        span.value = span_of(base, header.value);
    }
}

/// A request head taken off the front of `buf`, or `None` when more bytes are needed.
pub fn parse_request(
    buf: &mut BytesMut,
    max_bytes: usize,
) -> Result<Option<http::request::Parts>, HeadError> {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut spans = [Span::default(); MAX_HEADERS];
    let mut request = httparse::Request::new(&mut raw);
    let parsed = request.parse(buf);
    let Some(len) = head_length(parsed, buf.len(), max_bytes, "malformed request head")? else {
        return Ok(None);
    };
    let base = buf.as_ptr();
    let method = Method::from_bytes(request.method.unwrap_or("").as_bytes())
        .map_err(|_| HeadError::Malformed("invalid method"))?;
    let target = span_of(base, request.path.unwrap_or("").as_bytes());
    let version = version_of(request.version);
    let count = request.headers.len();
    record_spans(base, request.headers, &mut spans);
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target.0..target.1))
        .map_err(|_| HeadError::Malformed("invalid request target"))?;
    // The proxy adds the request id, `X-Real-IP` and maybe the secret token.
    let headers = header_map(&head, &spans[..count], 3)?;
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(parts))
}

/// A response head taken off the front of `buf`, or `None` when more bytes are needed.
pub fn parse_response(
    buf: &mut BytesMut,
    max_bytes: usize,
) -> Result<Option<http::response::Parts>, HeadError> {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut spans = [Span::default(); MAX_HEADERS];
    let mut response = httparse::Response::new(&mut raw);
    let parsed = response.parse(buf);
    let Some(len) = head_length(parsed, buf.len(), max_bytes, "malformed response head")? else {
        return Ok(None);
    };
    let base = buf.as_ptr();
    let status = StatusCode::from_u16(response.code.unwrap_or(0))
        .map_err(|_| HeadError::Malformed("invalid status code"))?;
    let version = version_of(response.version);
    let count = response.headers.len();
    record_spans(base, response.headers, &mut spans);
    let head = buf.split_to(len).freeze();
    // The proxy adds the request id.
    let headers = header_map(&head, &spans[..count], 1)?;
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(parts))
}

/// `Content-Length`, when every value given agrees (a list of equal values counts as one).
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, &'static str> {
    let mut found = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        let text = value.to_str().map_err(|_| "invalid Content-Length")?;
        for item in text.split(',') {
            let item = item.trim();
            if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
                return Err("invalid Content-Length");
            }
            let n: u64 = item.parse().map_err(|_| "invalid Content-Length")?;
            if found.is_some_and(|f| f != n) {
                return Err("conflicting Content-Length values");
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// Whether the last transfer coding is `chunked` (`None` without `Transfer-Encoding`).
fn chunked_last(headers: &HeaderMap) -> Option<bool> {
    let last = headers.get_all(TRANSFER_ENCODING).iter().next_back()?;
    let coding = last
        .as_bytes()
        .rsplit(|b| *b == b',')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    Some(coding.eq_ignore_ascii_case(b"chunked"))
}

/// A request's body framing (RFC 9112 §6.3); ambiguous framing is refused, as request smuggling relies on it.
pub fn request_framing(headers: &HeaderMap, version: Version) -> Result<Framing, &'static str> {
    match chunked_last(headers) {
        Some(_) if headers.contains_key(CONTENT_LENGTH) => {
            Err("both Content-Length and Transfer-Encoding")
        }
        Some(_) if version == Version::HTTP_10 => Err("Transfer-Encoding in an HTTP/1.0 request"),
        Some(true) => Ok(Framing::Chunked),
        Some(false) => Err("unsupported Transfer-Encoding"),
        None => Ok(match content_length(headers)? {
            None | Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
        }),
    }
}

/// A response's body framing: none for HEAD, 1xx, 204 and 304; `Transfer-Encoding` before `Content-Length`.
pub fn response_framing(
    status: StatusCode,
    head_request: bool,
    headers: &HeaderMap,
) -> Result<Framing, &'static str> {
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    Ok(match chunked_last(headers) {
        Some(true) => Framing::Chunked,
        Some(false) => Framing::UntilClose,
        None => match content_length(headers)? {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        },
    })
}

/// Whether the connection stays open after this message (`Connection` tokens and the version's default).
pub fn keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    let mut close = false;
    let mut keep_alive = false;
    for value in headers.get_all(http::header::CONNECTION) {
        for token in value.as_bytes().split(|b| *b == b',') {
            let token = token.trim_ascii();
            close |= token.eq_ignore_ascii_case(b"close");
            keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
        }
    }
    !close && (version == Version::HTTP_11 || keep_alive)
}

/// Cuts one body's bytes out of a buffered byte stream.
#[derive(Debug)]
pub struct BodyDecoder {
    state: State,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Length(u64),
    UntilClose,
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers(usize),
    Done,
}

/// What [`BodyDecoder::decode`] found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    NeedMore,
    Done,
}

impl BodyDecoder {
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::UntilClose => State::UntilClose,
        };
        Self { state }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// The exact number of body bytes still to come, when the framing says.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// Takes the next piece of body from the front of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, &'static str> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::Done),
                State::Length(n) | State::ChunkData(n) if buf.is_empty() => {
                    let _ = n;
                    return Ok(Decoded::NeedMore);
                }
                State::Length(n) => {
                    let take = n.min(buf.len() as u64);
                    self.state = if take == n {
                        State::Done
                    } else {
                        State::Length(n - take)
                    };
                    return Ok(Decoded::Data(buf.split_to(take as usize).freeze()));
                }
                State::UntilClose if buf.is_empty() => return Ok(Decoded::NeedMore),
                State::UntilClose => return Ok(Decoded::Data(buf.split().freeze())),
                State::ChunkData(n) => {
                    let take = n.min(buf.len() as u64);
                    self.state = if take == n {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(n - take)
                    };
                    return Ok(Decoded::Data(buf.split_to(take as usize).freeze()));
                }
                State::ChunkSize => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = chunk_size(&line)?;
                    self.state = if size == 0 {
                        State::Trailers(0)
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkEnd => match buf.first() {
                    None => return Ok(Decoded::NeedMore),
                    Some(b'\n') => {
                        let _ = buf.split_to(1);
                        self.state = State::ChunkSize;
                    }
                    Some(b'\r') if buf.len() < 2 => return Ok(Decoded::NeedMore),
                    Some(b'\r') if buf[1] == b'\n' => {
                        let _ = buf.split_to(2);
                        self.state = State::ChunkSize;
                    }
                    Some(_) => return Err("chunk data not followed by CRLF"),
                },
                State::Trailers(seen) => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    if line.is_empty() {
                        self.state = State::Done;
                    } else if seen + line.len() > MAX_CHUNK_LINE {
                        return Err("trailer section too large");
                    } else {
                        self.state = State::Trailers(seen + line.len());
                    }
                }
            }
        }
    }

    /// The sender closed the connection: the end of an until-close body, an error for any other unfinished one.
    pub fn eof(&mut self) -> Result<(), &'static str> {
        match self.state {
            State::UntilClose | State::Done => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err("connection closed before the end of the body"),
        }
    }
}

/// One line (without its CRLF or LF) off the front of `buf`, or `None` when it is not complete yet.
fn take_line(buf: &mut BytesMut) -> Result<Option<Bytes>, &'static str> {
    match buf.iter().position(|b| *b == b'\n') {
        Some(end) => {
            let mut line = buf.split_to(end + 1).freeze();
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.truncate(end - 1);
            }
            Ok(Some(line))
        }
        None if buf.len() > MAX_CHUNK_LINE => Err("chunk line too long"),
        None => Ok(None),
    }
}

/// A chunk-size line: hex digits, then optional extensions after `;`.
fn chunk_size(line: &[u8]) -> Result<u64, &'static str> {
    let digits = line
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return Err("invalid chunk size");
    }
    let mut size = 0u64;
    for b in digits {
        let digit = (*b as char).to_digit(16).ok_or("invalid chunk size")?;
        size = size * 16 + u64::from(digit);
    }
    Ok(size)
}

/// Polls the next piece of body, reading from `io` into `buf` when the buffer holds none. `Ok(None)` at the end.
pub fn poll_body<R: AsyncRead + ?Sized>(
    cx: &mut Context<'_>,
    mut io: Pin<&mut R>,
    buf: &mut BytesMut,
    decoder: &mut BodyDecoder,
) -> Poll<io::Result<Option<Bytes>>> {
    loop {
        match decoder.decode(buf).map_err(invalid)? {
            Decoded::Data(bytes) => return Poll::Ready(Ok(Some(bytes))),
            Decoded::Done => return Poll::Ready(Ok(None)),
            Decoded::NeedMore => {
                buf.reserve(READ_CHUNK);
                let read = ready!(tokio_util::io::poll_read_buf(io.as_mut(), cx, buf))?;
                if read == 0 {
                    decoder
                        .eof()
                        .map_err(|e| io::Error::new(io::ErrorKind::UnexpectedEof, e))?;
                }
            }
        }
    }
}

pub fn invalid(reason: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason)
}

/// Appends `name: value` lines for every header but those `skip` names (the framing the writer decides itself).
pub fn write_headers(out: &mut Vec<u8>, headers: &HeaderMap, skip: impl Fn(&HeaderName) -> bool) {
    for (name, value) in headers {
        if skip(name) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends a decimal number.
pub fn write_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Appends a chunk-size line for `len` bytes.
pub fn write_chunk_size(out: &mut Vec<u8>, len: usize) {
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    let mut n = len;
    loop {
        at -= 1;
        digits[at] = b"0123456789abcdef"[n % 16];
        n /= 16;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk of a chunked body, without trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(framing: Framing, input: &[u8]) -> Result<(Vec<u8>, bool, usize), &'static str> {
        let mut decoder = BodyDecoder::new(framing);
        let mut buf = BytesMut::from(input);
        let mut body = Vec::new();
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(bytes) => body.extend_from_slice(&bytes),
                Decoded::Done => return Ok((body, true, buf.len())),
                Decoded::NeedMore => return Ok((body, false, buf.len())),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_trailers_and_bare_lf() {
        let input = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\nGET /next";
        let (body, done, left) = decode_all(Framing::Chunked, input).unwrap();
        assert_eq!(body, b"hello world");
        assert!(done);
        assert_eq!(
            left,
            b"GET /next".len(),
            "the next message stays in the buffer"
        );
        let (body, done, _) = decode_all(Framing::Chunked, b"3\nabc\n0\n\n").unwrap();
        assert_eq!((body.as_slice(), done), (&b"abc"[..], true));
    }

    #[test]
    fn chunked_bodies_wait_for_more_at_every_boundary() {
        let input = b"a\r\n0123456789\r\n0\r\n\r\n";
        for cut in 0..input.len() {
            let mut decoder = BodyDecoder::new(Framing::Chunked);
            let mut buf = BytesMut::from(&input[..cut]);
            let mut body = Vec::new();
            let mut finish = |buf: &mut BytesMut, body: &mut Vec<u8>| loop {
                match decoder.decode(buf).unwrap() {
                    Decoded::Data(bytes) => body.extend_from_slice(&bytes),
                    Decoded::NeedMore => return false,
                    Decoded::Done => return true,
                }
            };
            assert!(!finish(&mut buf, &mut body), "done early at {cut}");
            buf.extend_from_slice(&input[cut..]);
            assert!(finish(&mut buf, &mut body), "not done after {cut}");
            assert_eq!(body, b"0123456789");
        }
    }

    #[test]
    fn bad_chunks_are_refused() {
        assert!(decode_all(Framing::Chunked, b"zz\r\n").is_err());
        assert!(decode_all(Framing::Chunked, b"3\r\nabcX\r\n").is_err());
        assert!(decode_all(Framing::Chunked, b"ffffffffffffffffff\r\n").is_err());
        let long = vec![b'1'; MAX_CHUNK_LINE + 1];
        assert!(decode_all(Framing::Chunked, &long).is_err());
    }

    #[test]
    fn length_bodies_stop_at_their_length() {
        let (body, done, left) = decode_all(Framing::Length(3), b"abcdef").unwrap();
        assert_eq!((body.as_slice(), done, left), (&b"abc"[..], true, 3));
        let mut decoder = BodyDecoder::new(Framing::Length(3));
        assert_eq!(decoder.remaining(), Some(3));
        assert!(decoder.eof().is_err(), "a short body is an error");
        let mut until_close = BodyDecoder::new(Framing::UntilClose);
        assert!(until_close.eof().is_ok());
        assert!(until_close.is_done());
    }

    #[test]
    fn request_framing_refuses_ambiguity() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (k, v) in pairs {
                map.append(*k, HeaderValue::from_static(v));
            }
            map
        };
        let v11 = Version::HTTP_11;
        assert_eq!(request_framing(&headers(&[]), v11), Ok(Framing::Empty));
        assert_eq!(
            request_framing(&headers(&[("content-length", "12")]), v11),
            Ok(Framing::Length(12))
        );
        assert_eq!(
            request_framing(&headers(&[("content-length", "12, 12")]), v11),
            Ok(Framing::Length(12))
        );
        assert!(request_framing(&headers(&[("content-length", "12, 13")]), v11).is_err());
        assert!(request_framing(&headers(&[("content-length", "-1")]), v11).is_err());
        assert!(request_framing(&headers(&[("content-length", "+5")]), v11).is_err());
        assert_eq!(
            request_framing(&headers(&[("transfer-encoding", "gzip, Chunked")]), v11),
            Ok(Framing::Chunked)
        );
        assert!(request_framing(
            &headers(&[("transfer-encoding", "chunked"), ("content-length", "3")]),
            v11
        )
        .is_err());
        assert!(request_framing(&headers(&[("transfer-encoding", "gzip")]), v11).is_err());
        assert!(request_framing(
            &headers(&[("transfer-encoding", "chunked")]),
            Version::HTTP_10
        )
        .is_err());
    }

    #[test]
    fn response_framing_follows_status_and_method() {
        let mut headers = HeaderMap::new();
        headers.insert("content-length", HeaderValue::from_static("5"));
        let ok = StatusCode::OK;
        assert_eq!(
            response_framing(ok, false, &headers),
            Ok(Framing::Length(5))
        );
        assert_eq!(response_framing(ok, true, &headers), Ok(Framing::Empty));
        assert_eq!(
            response_framing(StatusCode::NOT_MODIFIED, false, &headers),
            Ok(Framing::Empty)
        );
        assert_eq!(
            response_framing(ok, false, &HeaderMap::new()),
            Ok(Framing::UntilClose)
        );
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        assert_eq!(response_framing(ok, false, &headers), Ok(Framing::Chunked));
    }

    #[test]
    fn heads_parse_with_shared_values_and_limits() {
        let mut buf = BytesMut::from(
            &b"GET /a/b?x=1 HTTP/1.1\r\nHost: API.example\r\nX-Custom: v\r\n\r\nrest"[..],
        );
        let parts = parse_request(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(parts.method, Method::GET);
        assert_eq!(parts.uri.path(), "/a/b");
        assert_eq!(parts.uri.query(), Some("x=1"));
        assert_eq!(parts.headers["host"], "API.example");
        assert_eq!(parts.headers["x-custom"], "v");
        assert_eq!(&buf[..], b"rest");

        let mut partial = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: a\r\n"[..]);
        assert!(matches!(parse_request(&mut partial, 1024), Ok(None)));
        let mut big = BytesMut::from(&b"GET / HTTP/1.1\r\nX: "[..]);
        big.extend_from_slice(&[b'a'; 2000]);
        assert!(matches!(
            parse_request(&mut big, 1024),
            Err(HeadError::TooLarge)
        ));
        let mut garbage = BytesMut::from(&b"\x01\x02 nonsense\r\n\r\n"[..]);
        assert!(matches!(
            parse_request(&mut garbage, 1024),
            Err(HeadError::Malformed(_))
        ));

        let mut answer =
            BytesMut::from(&b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n"[..]);
        let parts = parse_response(&mut answer, 1024).unwrap().unwrap();
        assert_eq!(parts.status, StatusCode::NOT_FOUND);
        assert_eq!(parts.version, Version::HTTP_10);
        assert!(!keeps_alive(parts.version, &parts.headers));
    }

    #[test]
    fn numbers_are_written_in_decimal_and_hex() {
        let mut out = Vec::new();
        write_decimal(&mut out, 0);
        out.push(b' ');
        write_decimal(&mut out, 1234567890);
        out.push(b' ');
        write_chunk_size(&mut out, 0x1a2b);
        assert_eq!(out, b"0 1234567890 1a2b\r\n");
    }
}
