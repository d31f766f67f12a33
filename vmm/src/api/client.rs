//! A tiny client for the API socket, for `vmm ctl`: one request per connection, responses
//! framed by `Content-Length`, chunked coding or the end of the connection.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::http::{self, HttpError, MAX_HEADERS, MAX_HEADERS_SIZE, MAX_REQUEST_LINE};
use super::socket::NoSigPipe;

/// How long [`ApiClient::request`] waits for each read of the response, by default.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest response body, or streamed line, accepted.
pub const MAX_RESPONSE: usize = 1 << 20;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiClientError {
    /// The socket could not be connected to.
    #[error("Cannot connect to the API socket {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The request could not be sent.
    #[error("Cannot send the request")]
    Send(#[source] io::Error),
    /// The response could not be read.
    #[error("Cannot read the response")]
    Receive(#[source] io::Error),
    /// The VMM did not answer in time.
    #[error("No response from the VMM in time")]
    Timeout,
    /// The response is not valid HTTP.
    #[error("Malformed response: {0}")]
    Malformed(&'static str),
    /// The response is larger than [`MAX_RESPONSE`].
    #[error("Response too large")]
    TooLarge,
    /// The body is not JSON.
    #[error("Response is not valid JSON")]
    Json(#[source] serde_json::Error),
    /// A stream was refused; `message` is the body's `error`, or the body.
    #[error("The VMM answered {status}: {message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// Why.
        message: String,
    },
}

impl From<HttpError> for ApiClientError {
    fn from(err: HttpError) -> Self {
        match err {
            HttpError::Timeout => Self::Timeout,
            HttpError::Io(err) => Self::Receive(err),
            HttpError::Closed | HttpError::Incomplete => Self::Malformed("connection closed early"),
            HttpError::LineEnding => Self::Malformed("lines must end in CRLF"),
            HttpError::ContentLength | HttpError::DuplicateContentLength => {
                Self::Malformed("invalid Content-Length")
            }
            HttpError::Header => Self::Malformed("malformed header"),
            _ => Self::TooLarge,
        }
    }
}

/// A client of the API socket at a path.
#[derive(Clone, Debug)]
pub struct ApiClient {
    path: PathBuf,
    timeout: Duration,
}

impl ApiClient {
    /// A client of the socket at `path`, waiting up to [`CLIENT_TIMEOUT`] for responses.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            timeout: CLIENT_TIMEOUT,
        }
    }

    /// The same client waiting up to `timeout` (non-zero) for each read of a response.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        Self { timeout, ..self }
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends `method path` with an optional JSON body and returns the status and the body,
    /// `Value::Null` when it is empty.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, Value), ApiClientError> {
        let (mut reader, head) = self.send(method, path, body)?;
        let body = match method {
            "HEAD" => Vec::new(),
            _ => read_body(&mut reader, head.framing)?,
        };
        Ok((head.status, parse_json(&body)?))
    }

    /// GETs a stream of JSON lines. A status other than 200 is [`ApiClientError::Status`].
    pub fn stream(&self, path: &str) -> Result<ApiStream, ApiClientError> {
        let (mut reader, head) = self.send("GET", path, None)?;
        if head.status != 200 {
            let body = read_body(&mut reader, head.framing)?;
            let message = match serde_json::from_slice::<Value>(&body) {
                Ok(Value::Object(map)) if map.get("error").is_some_and(Value::is_string) => {
                    map["error"].as_str().unwrap_or_default().to_owned()
                }
                _ => String::from_utf8_lossy(&body).trim().to_owned(),
            };
            return Err(ApiClientError::Status {
                status: head.status,
                message,
            });
        }
        // Events come when they come.
        reader
            .get_ref()
            .set_read_timeout(None)
            .map_err(ApiClientError::Receive)?;
        Ok(ApiStream {
            reader,
            framing: head.framing,
            pending: Vec::new(),
            done: false,
        })
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(BufReader<UnixStream>, Head), ApiClientError> {
        let stream = UnixStream::connect(&self.path).map_err(|source| ApiClientError::Connect {
            path: self.path.clone(),
            source,
        })?;
        stream
            .set_read_timeout(Some(self.timeout))
            .map_err(ApiClientError::Send)?;
        stream
            .set_write_timeout(Some(self.timeout))
            .map_err(ApiClientError::Send)?;
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
        if let Some(body) = body {
            request.push_str("Content-Type: application/json\r\n");
            request.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        request.push_str("Connection: close\r\n\r\n");
        let mut request = request.into_bytes();
        request.extend_from_slice(body.unwrap_or_default());
        let sent = NoSigPipe(&stream).write_all(&request);
        let mut reader = BufReader::new(stream);
        // The server may answer (413...) without reading everything: read that answer.
        match (read_head(&mut reader), sent) {
            (Ok(head), _) => Ok((reader, head)),
            (Err(_), Err(err)) => Err(ApiClientError::Send(err)),
            (Err(err), Ok(())) => Err(err),
        }
    }
}

/// How a response body ends.
#[derive(Clone, Copy, Debug)]
enum Framing {
    Length(u64),
    Chunked,
    Close,
}

struct Head {
    status: u16,
    framing: Framing,
}

fn read_head(r: &mut impl BufRead) -> Result<Head, ApiClientError> {
    let line = http::read_line(r, MAX_REQUEST_LINE, HttpError::RequestLineTooLong, true)?;
    let line = String::from_utf8_lossy(&line);
    let mut parts = line.splitn(3, ' ');
    let (version, code) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(ApiClientError::Malformed("bad status line"));
    }
    let status = code
        .parse()
        .map_err(|_| ApiClientError::Malformed("bad status line"))?;
    let mut framing = Framing::Close;
    let mut budget = MAX_HEADERS_SIZE;
    for _ in 0..=MAX_HEADERS {
        let line = http::read_line(
            r,
            budget.saturating_sub(2),
            HttpError::HeadersTooLarge,
            false,
        )?;
        if line.is_empty() {
            return Ok(Head { status, framing });
        }
        budget -= line.len() + 2;
        let (name, value) = http::parse_header(&line).ok_or(HttpError::Header)?;
        if name.eq_ignore_ascii_case("transfer-encoding") {
            if !value.eq_ignore_ascii_case("chunked") {
                return Err(ApiClientError::Malformed("unsupported Transfer-Encoding"));
            }
            framing = Framing::Chunked;
        } else if name.eq_ignore_ascii_case("content-length")
            && !matches!(framing, Framing::Chunked)
        {
            framing = Framing::Length(http::parse_content_length(&value)?);
        }
    }
    Err(ApiClientError::TooLarge)
}

fn read_body(r: &mut impl BufRead, framing: Framing) -> Result<Vec<u8>, ApiClientError> {
    let mut body = Vec::new();
    match framing {
        Framing::Chunked => {
            while let Some(chunk) = read_chunk(r)? {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_RESPONSE {
                    return Err(ApiClientError::TooLarge);
                }
            }
        }
        Framing::Length(len) if len > MAX_RESPONSE as u64 => return Err(ApiClientError::TooLarge),
        Framing::Length(len) => {
            read_exact_into(r, len, &mut body)?;
        }
        Framing::Close => {
            r.take(MAX_RESPONSE as u64 + 1)
                .read_to_end(&mut body)
                .map_err(HttpError::from)?;
            if body.len() > MAX_RESPONSE {
                return Err(ApiClientError::TooLarge);
            }
        }
    }
    Ok(body)
}

/// Appends `len` bytes to `buf`, failing if the connection ends first.
fn read_exact_into(r: &mut impl Read, len: u64, buf: &mut Vec<u8>) -> Result<(), HttpError> {
    let start = buf.len();
    r.take(len).read_to_end(buf)?;
    match (buf.len() - start) as u64 == len {
        true => Ok(()),
        false => Err(HttpError::Incomplete),
    }
}

/// Reads one chunk's data; `None` after the last chunk and its trailers.
fn read_chunk(r: &mut impl BufRead) -> Result<Option<Vec<u8>>, ApiClientError> {
    let line = http::read_line(r, 1024, HttpError::HeadersTooLarge, false)?;
    let line = String::from_utf8_lossy(&line);
    let size = line.split(';').next().unwrap_or_default().trim();
    let size =
        u64::from_str_radix(size, 16).map_err(|_| ApiClientError::Malformed("bad chunk size"))?;
    if size == 0 {
        // Trailers, up to the empty line.
        while !http::read_line(r, MAX_HEADERS_SIZE, HttpError::HeadersTooLarge, false)?.is_empty() {
        }
        return Ok(None);
    }
    if size > MAX_RESPONSE as u64 {
        return Err(ApiClientError::TooLarge);
    }
    let mut data = Vec::new();
    read_exact_into(r, size, &mut data)?;
    if !http::read_line(r, 0, HttpError::HeadersTooLarge, false)?.is_empty() {
        return Err(ApiClientError::Malformed("chunk longer than its size"));
    }
    Ok(Some(data))
}

fn parse_json(body: &[u8]) -> Result<Value, ApiClientError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body).map_err(ApiClientError::Json)
}

/// The JSON values of a streamed response, one per line, until the server ends the stream.
/// Dropping it closes the connection, which unsubscribes.
pub struct ApiStream {
    reader: BufReader<UnixStream>,
    framing: Framing,
    pending: Vec<u8>,
    done: bool,
}

impl ApiStream {
    /// Appends the next piece of the body to `pending`; false at its end.
    fn fill(&mut self) -> Result<bool, ApiClientError> {
        let r = &mut self.reader;
        match self.framing {
            Framing::Chunked => match read_chunk(r)? {
                Some(chunk) => self.pending.extend_from_slice(&chunk),
                None => return Ok(false),
            },
            Framing::Length(0) => return Ok(false),
            Framing::Length(left) => {
                let n = r
                    .take(left.min(8192))
                    .read_to_end(&mut self.pending)
                    .map_err(HttpError::from)?;
                if n == 0 {
                    return Err(HttpError::Incomplete.into());
                }
                self.framing = Framing::Length(left - n as u64);
            }
            Framing::Close => {
                let n = r
                    .take(8192)
                    .read_to_end(&mut self.pending)
                    .map_err(HttpError::from)?;
                return Ok(n > 0);
            }
        }
        Ok(true)
    }
}

impl Iterator for ApiStream {
    type Item = Result<Value, ApiClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let end = self.pending.iter().position(|&b| b == b'\n');
            let end = end.or((self.done && !self.pending.is_empty()).then_some(self.pending.len()));
            if let Some(end) = end {
                let line: Vec<u8> = self
                    .pending
                    .drain(..end.saturating_add(1).min(self.pending.len()))
                    .collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Some(serde_json::from_slice(&line).map_err(ApiClientError::Json));
            }
            if self.done {
                return None;
            }
            if self.pending.len() > MAX_RESPONSE {
                self.done = true;
                self.pending.clear();
                return Some(Err(ApiClientError::TooLarge));
            }
            match self.fill() {
                Ok(more) => self.done = !more,
                Err(err) => {
                    self.done = true;
                    self.pending.clear();
                    return Some(Err(err));
                }
            }
        }
    }
}
