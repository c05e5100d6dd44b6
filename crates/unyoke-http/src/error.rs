//! Why a request was rejected, and with which status.

/// A request the decoder refuses. Every variant maps to one status code; after any of
/// them the connection must be closed, because the framing of what follows is in doubt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    /// Malformed request line (method, target, version syntax). 400.
    InvalidRequestLine,
    /// A header name with a character outside `token`, or whitespace before the colon. 400.
    InvalidHeaderName,
    /// A header value with NUL, bare CR or LF, or other forbidden control characters. 400.
    InvalidHeaderValue,
    /// Obsolete line folding (a header line starting with SP/HTAB). 400.
    ObsFold,
    /// A bare CR or LF where CRLF is required. 400.
    InvalidLineEnding,
    /// HTTP/1.1 request without a Host header, or with several. 400.
    MissingHost,
    /// Content-Length that is not plain digits, or several that differ. 400.
    InvalidContentLength,
    /// Both Content-Length and Transfer-Encoding. 400.
    ContentLengthWithTransferEncoding,
    /// Transfer-Encoding whose final coding is not `chunked`, or `chunked` twice. 400.
    ChunkedNotFinal,
    /// Transfer-Encoding with a coding this server does not know. 501.
    UnknownTransferCoding,
    /// Transfer-Encoding on an HTTP/1.0 request. 400.
    TransferEncodingOnHttp10,
    /// Malformed chunk size line, chunk data not followed by CRLF, bad trailers. 400.
    InvalidChunk,
    /// The peer closed the connection in the middle of a message. 400.
    IncompleteMessage,
    /// The request head is larger than `max_request_header_size`. 431.
    HeaderTooLarge,
    /// More header fields than `max_headers`. 431.
    TooManyHeaders,
    /// The request target is longer than `url_length_limit`. 414.
    UriTooLong,
    /// The body is larger than `max_request_body_size`. 413.
    BodyTooLarge,
    /// An HTTP version other than 1.0 or 1.1. 505.
    UnsupportedVersion,
}

impl RequestError {
    /// The response status code for this error.
    pub fn status(self) -> u16 {
        match self {
            RequestError::UnknownTransferCoding => 501,
            RequestError::HeaderTooLarge | RequestError::TooManyHeaders => 431,
            RequestError::UriTooLong => 414,
            RequestError::BodyTooLarge => 413,
            RequestError::UnsupportedVersion => 505,
            _ => 400,
        }
    }

    /// The status line's reason phrase, e.g. `"Bad Request"`.
    pub fn reason(self) -> &'static str {
        match self.status() {
            501 => "Not Implemented",
            431 => "Request Header Fields Too Large",
            414 => "URI Too Long",
            413 => "Content Too Large",
            505 => "HTTP Version Not Supported",
            _ => "Bad Request",
        }
    }

    /// A short human explanation, safe to send to the peer in the error body.
    pub fn detail(self) -> &'static str {
        match self {
            RequestError::InvalidRequestLine => "malformed request line",
            RequestError::InvalidHeaderName => "invalid header name",
            RequestError::InvalidHeaderValue => "invalid header value",
            RequestError::ObsFold => "obsolete line folding is not accepted",
            RequestError::InvalidLineEnding => "invalid line ending",
            RequestError::MissingHost => "HTTP/1.1 requires exactly one Host header",
            RequestError::InvalidContentLength => "invalid Content-Length",
            RequestError::ContentLengthWithTransferEncoding => {
                "Content-Length and Transfer-Encoding together"
            }
            RequestError::ChunkedNotFinal => "chunked must be the final transfer coding",
            RequestError::UnknownTransferCoding => "unknown transfer coding",
            RequestError::TransferEncodingOnHttp10 => "Transfer-Encoding on HTTP/1.0",
            RequestError::InvalidChunk => "malformed chunked body",
            RequestError::IncompleteMessage => "connection closed mid-message",
            RequestError::HeaderTooLarge => "request header too large",
            RequestError::TooManyHeaders => "too many header fields",
            RequestError::UriTooLong => "request target too long",
            RequestError::BodyTooLarge => "request body too large",
            RequestError::UnsupportedVersion => "HTTP version not supported",
        }
    }
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status(), self.reason(), self.detail())
    }
}

impl std::error::Error for RequestError {}
