//! A strict HTTP/1.1 request parser and the response writers, as pure functions over
//! [`BufRead`]/[`Write`] so that they can be tested and fuzzed without sockets.
//!
//! Decisions beyond RFC 9112's musts:
//! - Lines must end in CRLF; a bare LF or a stray CR is 400 (lenient line parsing is how
//!   request smuggling starts, and every real client sends CRLF).
//! - Bodies need `Content-Length`; any `Transfer-Encoding` is 411 Length Required.
//! - Duplicate `Content-Length` headers are 400 even when they agree.
//! - Obsolete line folding and empty lines before the request line are 400.
//! - `Host` is not required: the socket is local and `socat`-style clients omit it.
//! - `Expect: 100-continue` is ignored; clients then send the body after their own delay.
//! - Header values must be UTF-8 without control characters other than HTAB.

use std::io::{self, BufRead, Read, Write};

use serde_json::Value;

/// The longest request line accepted, CRLF excluded (414 beyond).
pub const MAX_REQUEST_LINE: usize = 8 * 1024;
/// The most bytes all header lines may take together, CRLFs included (431 beyond).
pub const MAX_HEADERS_SIZE: usize = 16 * 1024;
/// The most header lines accepted (431 beyond).
pub const MAX_HEADERS: usize = 64;
/// The largest request body accepted (413 beyond).
pub const MAX_BODY: usize = 64 * 1024;
/// The media type of streamed responses: one JSON value per line.
pub const NDJSON: &str = "application/x-ndjson";

/// Why a request was rejected. [`HttpError::status`] is the status to answer with.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The peer closed the connection before sending anything: nothing to answer.
    #[error("Connection closed before a request")]
    Closed,
    /// The peer closed the connection in the middle of the request.
    #[error("Incomplete request")]
    Incomplete,
    /// The request did not arrive in time.
    #[error("Request timeout")]
    Timeout,
    /// Reading the request failed.
    #[error("Cannot read the request")]
    Io(#[source] io::Error),
    /// The request line is longer than [`MAX_REQUEST_LINE`].
    #[error("Request line too long")]
    RequestLineTooLong,
    /// The header lines take more than [`MAX_HEADERS_SIZE`] bytes.
    #[error("Request headers too large")]
    HeadersTooLarge,
    /// There are more than [`MAX_HEADERS`] header lines.
    #[error("Too many request headers")]
    TooManyHeaders,
    /// A line ends in LF alone or holds a CR.
    #[error("Lines must end in CRLF")]
    LineEnding,
    /// The request line is not `METHOD SP target SP version`.
    #[error("Malformed request line")]
    RequestLine,
    /// The method is not a token.
    #[error("Invalid method")]
    Method,
    /// The target does not start with `/` or holds a character that is not visible ASCII.
    #[error("Invalid request target")]
    Target,
    /// The version is `HTTP/x` but not 1.0 or 1.1.
    #[error("HTTP version not supported")]
    Version,
    /// A header line is not `name: value` with a token name and a valid value.
    #[error("Malformed header")]
    Header,
    /// `Content-Length` is not a decimal number.
    #[error("Invalid Content-Length")]
    ContentLength,
    /// `Content-Length` appears more than once.
    #[error("Duplicate Content-Length")]
    DuplicateContentLength,
    /// The request has a `Transfer-Encoding`.
    #[error("Transfer-Encoding is not supported; send Content-Length")]
    TransferEncoding,
    /// The body is larger than [`MAX_BODY`].
    #[error("Request body too large")]
    BodyTooLarge,
}

impl HttpError {
    /// The HTTP status that answers this error.
    pub fn status(&self) -> u16 {
        match self {
            Self::Timeout => 408,
            Self::TransferEncoding => 411,
            Self::BodyTooLarge => 413,
            Self::RequestLineTooLong => 414,
            Self::HeadersTooLarge | Self::TooManyHeaders => 431,
            Self::Version => 505,
            _ => 400,
        }
    }

    /// The JSON error body: `{"error": "<message>"}`.
    pub fn to_json(&self) -> Value {
        error_body(&self.to_string())
    }

    /// Whether the server answers the request with this error: not when the peer closed or
    /// the connection failed, as nobody would read the answer.
    pub(crate) fn is_answered(&self) -> bool {
        // No catch-all arm, so that a new error is placed here, and in `answered` too.
        match self {
            Self::Closed | Self::Io(_) => false,
            Self::Incomplete
            | Self::Timeout
            | Self::RequestLineTooLong
            | Self::HeadersTooLarge
            | Self::TooManyHeaders
            | Self::LineEnding
            | Self::RequestLine
            | Self::Method
            | Self::Target
            | Self::Version
            | Self::Header
            | Self::ContentLength
            | Self::DuplicateContentLength
            | Self::TransferEncoding
            | Self::BodyTooLarge => true,
        }
    }

    /// One of each error the server answers, for the statuses they map to.
    pub(crate) fn answered() -> Vec<Self> {
        let every = [
            Self::Closed,
            Self::Incomplete,
            Self::Timeout,
            Self::Io(io::Error::other("")),
            Self::RequestLineTooLong,
            Self::HeadersTooLarge,
            Self::TooManyHeaders,
            Self::LineEnding,
            Self::RequestLine,
            Self::Method,
            Self::Target,
            Self::Version,
            Self::Header,
            Self::ContentLength,
            Self::DuplicateContentLength,
            Self::TransferEncoding,
            Self::BodyTooLarge,
        ];
        every.into_iter().filter(Self::is_answered).collect()
    }
}

impl From<io::Error> for HttpError {
    fn from(err: io::Error) -> Self {
        match err.kind() {
            // SO_RCVTIMEO expiring surfaces as EAGAIN.
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Self::Timeout,
            io::ErrorKind::UnexpectedEof => Self::Incomplete,
            _ => Self::Io(err),
        }
    }
}

/// The HTTP version of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0: streamed responses are delimited by closing the connection.
    Http10,
    /// HTTP/1.1.
    Http11,
}

impl Version {
    /// The version as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http10 => "HTTP/1.0",
            Self::Http11 => "HTTP/1.1",
        }
    }
}

/// A well-formed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The method, a token such as `GET`; which ones are allowed is the router's business.
    pub method: String,
    /// The target as sent: starts with `/`, not percent-decoded, query string included.
    pub target: String,
    /// The version.
    pub version: Version,
    /// The headers in order, names as sent and values without surrounding whitespace.
    pub headers: Vec<(String, String)>,
    /// The body, `Content-Length` bytes.
    pub body: Vec<u8>,
}

impl Request {
    /// The value of the first header called `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut matches = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name));
        matches.next().map(|(_, v)| v.as_str())
    }

    /// The request in wire format; parsing it again yields the same request.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "{} {} {}\r\n",
            self.method,
            self.target,
            self.version.as_str()
        );
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// Reads one request, consuming at most the limits' worth of bytes from `r`.
pub fn read_request(r: &mut impl BufRead) -> Result<Request, HttpError> {
    let line = read_line(r, MAX_REQUEST_LINE, HttpError::RequestLineTooLong, true)?;
    let (method, target, version) = parse_request_line(&line)?;

    let mut headers = Vec::new();
    let mut budget = MAX_HEADERS_SIZE;
    loop {
        let line = read_line(
            r,
            budget.saturating_sub(2),
            HttpError::HeadersTooLarge,
            false,
        )?;
        if line.is_empty() {
            break;
        }
        if headers.len() == MAX_HEADERS {
            return Err(HttpError::TooManyHeaders);
        }
        budget -= line.len() + 2;
        headers.push(parse_header(&line).ok_or(HttpError::Header)?);
    }

    let mut length = None;
    for (name, value) in &headers {
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::TransferEncoding);
        }
        if name.eq_ignore_ascii_case("content-length") {
            if length.is_some() {
                return Err(HttpError::DuplicateContentLength);
            }
            length = Some(parse_content_length(value)?);
        }
    }
    let mut body = Vec::new();
    if let Some(length) = length {
        let len = usize::try_from(length).map_err(|_| HttpError::BodyTooLarge)?;
        if len > MAX_BODY {
            return Err(HttpError::BodyTooLarge);
        }
        r.take(length).read_to_end(&mut body)?;
        if body.len() != len {
            return Err(HttpError::Incomplete);
        }
    }
    Ok(Request {
        method,
        target,
        version,
        headers,
        body,
    })
}

/// Reads a CRLF-terminated line of at most `max` bytes (CRLF excluded) and strips the CRLF.
/// `first` marks the start of a message, where EOF means the peer just closed.
pub(crate) fn read_line(
    r: &mut impl BufRead,
    max: usize,
    too_long: HttpError,
    first: bool,
) -> Result<Vec<u8>, HttpError> {
    let mut line = Vec::new();
    r.take(max as u64 + 2).read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        return Err(match line.len() {
            0 if first => HttpError::Closed,
            n if n == max + 2 => too_long,
            _ => HttpError::Incomplete,
        });
    }
    if !line.ends_with(b"\r\n") {
        return Err(HttpError::LineEnding);
    }
    line.truncate(line.len() - 2);
    if line.contains(&b'\r') {
        return Err(HttpError::LineEnding);
    }
    Ok(line)
}

fn parse_request_line(line: &[u8]) -> Result<(String, String, Version), HttpError> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::RequestLine);
    };
    if !is_token(method) {
        return Err(HttpError::Method);
    }
    if target.first() != Some(&b'/') || !target.iter().all(|b| b.is_ascii_graphic()) {
        return Err(HttpError::Target);
    }
    let version = match version {
        b"HTTP/1.1" => Version::Http11,
        b"HTTP/1.0" => Version::Http10,
        v if v.starts_with(b"HTTP/") => return Err(HttpError::Version),
        _ => return Err(HttpError::RequestLine),
    };
    // Both are ASCII, checked above.
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok((text(method), text(target), version))
}

/// Splits `name: value`, checking the name is a token and the value has no control
/// characters but HTAB; the value loses its surrounding whitespace.
pub(crate) fn parse_header(line: &[u8]) -> Option<(String, String)> {
    let colon = line.iter().position(|&b| b == b':')?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if !is_token(name) {
        return None;
    }
    let value = std::str::from_utf8(value).ok()?;
    if value.chars().any(|c| c.is_ascii_control() && c != '\t') {
        return None;
    }
    let value = value.trim_matches([' ', '\t']);
    Some((String::from_utf8_lossy(name).into_owned(), value.to_owned()))
}

/// Parses a `Content-Length` value: decimal digits only. Too many digits means too large.
pub(crate) fn parse_content_length(value: &str) -> Result<u64, HttpError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HttpError::ContentLength);
    }
    value.parse().map_err(|_| HttpError::BodyTooLarge)
}

/// Whether `s` is a non-empty RFC 9110 token.
fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A JSON error body: `{"error": "<message>"}`.
pub fn error_body(message: &str) -> Value {
    serde_json::json!({ "error": message })
}

/// The reason phrase for `status`.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Writes a complete JSON response with `Connection: close`.
pub fn write_json(w: &mut impl Write, status: u16, body: &Value) -> io::Result<()> {
    write_json_response(w, status, body, true)
}

/// Writes the response [`write_json`] would write, without the body, as HEAD requires.
pub fn write_json_head(w: &mut impl Write, status: u16, body: &Value) -> io::Result<()> {
    write_json_response(w, status, body, false)
}

fn write_json_response(
    w: &mut impl Write,
    status: u16,
    body: &Value,
    with_body: bool,
) -> io::Result<()> {
    let reason = reason(status);
    // 204 has no body, so no length or type either, whatever the router passed.
    let out = if status == 204 {
        format!("HTTP/1.1 204 {reason}\r\nConnection: close\r\n\r\n")
    } else {
        let body = serde_json::to_string(body).map_err(io::Error::other)?;
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        if with_body { head + &body } else { head }
    };
    w.write_all(out.as_bytes())?;
    w.flush()
}

/// Writes a 200 response whose body is a stream of JSON lines: one chunk per line over
/// HTTP/1.1, and (as HTTP/1.0 has no chunked coding) plain lines ended by closing there.
pub struct NdjsonWriter<W: Write> {
    w: W,
    chunked: bool,
}

impl<W: Write> NdjsonWriter<W> {
    /// Writes the response head for a request of `version`.
    pub fn start(mut w: W, version: Version) -> io::Result<Self> {
        let chunked = version == Version::Http11;
        let coding = if chunked {
            "Transfer-Encoding: chunked\r\n"
        } else {
            ""
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {NDJSON}\r\n{coding}Connection: close\r\n\r\n"
        );
        w.write_all(head.as_bytes())?;
        w.flush()?;
        Ok(Self { w, chunked })
    }

    /// Writes `value` as one line and flushes it to the peer.
    pub fn write_line(&mut self, value: &Value) -> io::Result<()> {
        let mut line = serde_json::to_vec(value).map_err(io::Error::other)?;
        line.push(b'\n');
        if self.chunked {
            let mut chunk = format!("{:x}\r\n", line.len()).into_bytes();
            chunk.extend_from_slice(&line);
            chunk.extend_from_slice(b"\r\n");
            line = chunk;
        }
        self.w.write_all(&line)?;
        self.w.flush()
    }

    /// Ends the stream with the last chunk, and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        if self.chunked {
            self.w.write_all(b"0\r\n\r\n")?;
            self.w.flush()?;
        }
        Ok(self.w)
    }
}
