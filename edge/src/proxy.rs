//! Forwarding to the origin, with a deadline.

use std::pin::pin;
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::future::{Either, select};
use gatehouse_shared::api::{CLIENT_IP_HEADER, EDGE_SECRET_HEADER, REQUEST_ID_HEADER};
use worker::{
    AbortController, Delay, Fetch, Headers, Method, Request, RequestInit, RequestRedirect, Response,
};

use crate::config::EdgeConfig;
use crate::error::AppError;

/// Largest body the edge forwards. The origin's own limit is 16 KiB by default; this stops
/// oversized uploads here, reading no more than this whether or not a length was declared.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Headers that describe one hop, not the message (RFC 9110 section 7.6.1), plus those the edge
/// sets itself and must not accept from a client.
const NOT_FORWARDED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    REQUEST_ID_HEADER,
    CLIENT_IP_HEADER,
    EDGE_SECRET_HEADER,
];

/// Sends `request` to the origin with method, path, query, body and headers intact, plus the
/// request id, the client IP and the edge secret.
pub async fn forward(
    mut request: Request,
    config: &EdgeConfig,
    request_id: &str,
) -> Result<Response, AppError> {
    let url = request.url()?;
    let target = match url.query() {
        Some(query) => format!("{}{}?{query}", config.origin_url, url.path()),
        None => format!("{}{}", config.origin_url, url.path()),
    };
    let declared_length = request
        .headers()
        .get("content-length")?
        .and_then(|length| length.parse::<usize>().ok());
    if declared_length.is_some_and(|length| length > MAX_BODY_BYTES) {
        return Err(AppError::PayloadTooLarge);
    }

    let headers = Headers::new();
    for (name, value) in request.headers().entries() {
        if !NOT_FORWARDED.contains(&name.as_str()) {
            headers.append(&name, &value)?;
        }
    }
    headers.set(REQUEST_ID_HEADER, request_id)?;
    if let Some(ip) = request.headers().get("cf-connecting-ip")? {
        headers.set(CLIENT_IP_HEADER, &ip)?;
    }
    headers.set(EDGE_SECRET_HEADER, &config.edge_secret)?;
    let method = request.method();
    let body = if matches!(method, Method::Get | Method::Head) {
        None
    } else {
        let bytes = read_body(&mut request).await?;
        (!bytes.is_empty()).then(|| js_sys::Uint8Array::from(bytes.as_slice()).into())
    };
    let mut init = RequestInit::new();
    init.with_method(method)
        .with_headers(headers)
        .with_body(body)
        .with_redirect(RequestRedirect::Manual);
    let outbound = Request::new_with_init(&target, &init)?;
    let response = send(outbound, config, request_id).await?;
    // Responses from fetch have immutable headers; copy them so CORS and the request id can be
    // added on the way out.
    let headers = Headers::new();
    for (name, value) in response.headers().entries() {
        headers.append(&name, &value)?;
    }
    Ok(response.with_headers(headers))
}

/// Reads a request body chunk by chunk, refusing it as soon as it passes `MAX_BODY_BYTES`, so
/// an undeclared (chunked) upload cannot fill the isolate's memory.
async fn read_body(request: &mut Request) -> Result<Vec<u8>, AppError> {
    let Ok(mut stream) = request.stream() else {
        return Ok(Vec::new());
    };
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| AppError::UnreadableBody)?;
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(AppError::PayloadTooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A GET the edge makes for itself (the key set, the revocation list, an API key's verdict), with
/// `headers`, the request id and, when `with_edge_secret`, the edge secret. It never follows a
/// redirect: it carries the edge secret or an API key, which a redirect would hand to wherever it
/// points. A 3xx is just an answer the caller does not expect.
pub async fn lookup(
    url: &str,
    headers: &[(&str, &str)],
    with_edge_secret: bool,
    config: &EdgeConfig,
    request_id: &str,
) -> Result<Response, AppError> {
    let sent = Headers::new();
    for (name, value) in headers {
        sent.set(name, value)?;
    }
    sent.set(REQUEST_ID_HEADER, request_id)?;
    if with_edge_secret {
        sent.set(EDGE_SECRET_HEADER, &config.edge_secret)?;
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Get)
        .with_headers(sent)
        .with_redirect(RequestRedirect::Manual);
    send(Request::new_with_init(url, &init)?, config, request_id).await
}

/// Sends a request to the origin, giving up after `ORIGIN_TIMEOUT_MS`.
pub async fn send(
    request: Request,
    config: &EdgeConfig,
    request_id: &str,
) -> Result<Response, AppError> {
    let controller = AbortController::default();
    let signal = controller.signal();
    let fetch = Fetch::Request(request);
    match within_deadline(fetch.send_with_signal(&signal), config).await {
        Some(Ok(response)) => Ok(response),
        Some(Err(error)) => {
            worker::console_error!("request {request_id}: origin unreachable: {error}");
            Err(AppError::OriginUnreachable)
        }
        None => {
            controller.abort();
            worker::console_error!("request {request_id}: origin timed out");
            Err(AppError::OriginTimeout)
        }
    }
}

/// `future`'s output, or `None` once `ORIGIN_TIMEOUT_MS` has passed. Also bounds reading a
/// response body: an origin that sends headers and then stalls must not hold a request open.
pub async fn within_deadline<T>(
    future: impl std::future::Future<Output = T>,
    config: &EdgeConfig,
) -> Option<T> {
    let call = pin!(future);
    let deadline = pin!(Delay::from(Duration::from_millis(config.origin_timeout_ms)));
    match select(call, deadline).await {
        Either::Left((output, _)) => Some(output),
        Either::Right(_) => None,
    }
}
