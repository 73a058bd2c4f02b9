//! What the edge sends back: an answer it makes itself, or the origin's response.
//!
//! The edge's own answers (preflights, verifications, problems) stay in Rust until they are sent
//! and reach the runtime in the one call that makes the response: status, headers and body in
//! one crossing into JavaScript, where a `Headers` object took a crossing per header and was then
//! copied into the response. (A V8 profile of preflights put 7 % of the isolate's time in header
//! writes.) The origin's responses arrive as the runtime's objects and are decorated in place.

use wasm_bindgen::prelude::wasm_bindgen;
use worker::worker_sys::web_sys;

#[wasm_bindgen(inline_js = r#"
export function set_header_lines(headers, lines) {
  const parts = lines.split("\n");
  for (let i = 0; i + 1 < parts.length; i += 2) headers.set(parts[i], parts[i + 1]);
}
export function new_response(status, lines, body) {
  const parts = lines.split("\n");
  const headers = {};
  for (let i = 0; i + 1 < parts.length; i += 2) headers[parts[i]] = parts[i + 1];
  return new Response(body, { status, headers });
}"#)]
extern "C" {
    fn set_header_lines(headers: &web_sys::Headers, lines: &str);
    fn new_response(status: u16, lines: &str, body: Option<&str>) -> web_sys::Response;
}

/// Appends a header as a line pair. Names and values cannot hold a newline (RFC 9110 section
/// 5.5), so newlines separate them on the way to JavaScript.
fn push_line(lines: &mut String, name: &str, value: &str) {
    debug_assert!(!name.contains('\n') && !value.contains('\n'));
    lines.push_str(name);
    lines.push('\n');
    lines.push_str(value);
    lines.push('\n');
}

/// Sets every `(name, value)` of `pairs` on `headers` in one call into JavaScript.
pub fn set_headers(headers: &worker::Headers, pairs: &[(&str, &str)]) {
    let mut lines = String::new();
    for (name, value) in pairs {
        push_line(&mut lines, name, value);
    }
    set_header_lines(&headers.0, &lines);
}

/// A response the edge makes itself; its header names are distinct.
#[derive(Debug)]
pub struct Answer {
    status: u16,
    lines: String,
    body: Option<String>,
}

impl Answer {
    /// An answer with no body (a 204).
    pub fn empty(status: u16) -> Self {
        Answer {
            status,
            lines: String::new(),
            body: None,
        }
    }

    /// An answer with `body`, of the media type `content_type`.
    pub fn with_body(status: u16, content_type: &str, body: String) -> Self {
        Answer::empty(status)
            .header("content-type", content_type)
            .body(body)
    }

    pub fn body(mut self, body: String) -> Self {
        self.body = Some(body);
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        push_line(&mut self.lines, name, value);
        self
    }
}

/// What one request gets back.
pub enum Reply {
    Answer(Answer),
    Forwarded(worker::Response),
}

impl Reply {
    pub fn status(&self) -> u16 {
        match self {
            Reply::Answer(answer) => answer.status,
            Reply::Forwarded(response) => response.status_code(),
        }
    }

    /// Adds `Vary: Origin` to whatever the response varies on already.
    pub fn vary_on_origin(&mut self) {
        match self {
            Reply::Answer(answer) => push_line(&mut answer.lines, "vary", "Origin"),
            Reply::Forwarded(response) => {
                let _ = response.headers_mut().append("vary", "Origin");
            }
        }
    }

    /// Sets `pairs`, replacing any header of the same name the origin sent.
    pub fn set_headers(&mut self, pairs: &[(&str, &str)]) {
        match self {
            Reply::Answer(answer) => {
                for (name, value) in pairs {
                    push_line(&mut answer.lines, name, value);
                }
            }
            Reply::Forwarded(response) => set_headers(response.headers_mut(), pairs),
        }
    }

    pub fn into_response(self) -> web_sys::Response {
        match self {
            Reply::Answer(answer) => {
                new_response(answer.status, &answer.lines, answer.body.as_deref())
            }
            Reply::Forwarded(response) => response.into(),
        }
    }
}
