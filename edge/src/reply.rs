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
// Header names are lowercase and distinct (`Answer::header`), so a plain object holds them: the
// runtime converts it faster than a Headers object filled by set() or a list of pairs.
export function new_response(status, lines, body) {
  const parts = lines.split("\n");
  const headers = {};
  for (let i = 0; i + 1 < parts.length; i += 2) headers[parts[i]] = parts[i + 1];
  return new Response(body, { status, headers });
}"#)]
extern "C" {
    fn set_header_lines(headers: &web_sys::Headers, lines: &str);
    #[wasm_bindgen(catch)]
    fn new_response(
        status: u16,
        lines: &str,
        body: Option<&str>,
    ) -> Result<web_sys::Response, wasm_bindgen::JsValue>;
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

/// A response the edge makes itself.
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
        let mut answer = Answer::empty(status).header("content-type", content_type);
        answer.body = Some(body);
        answer
    }

    /// Adds a header. `name` is lowercase and not already there: the answer's headers are sent
    /// as one object, a key per name.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.push(name, value);
        self
    }

    fn push(&mut self, name: &str, value: &str) {
        debug_assert!(
            name.bytes().all(|b| !b.is_ascii_uppercase())
                && !self.lines.split('\n').step_by(2).any(|held| held == name),
            "{name}: header names of an answer are lowercase and distinct"
        );
        push_line(&mut self.lines, name, value);
    }

    /// The runtime's response. A header the runtime refuses (none of the edge's can be) costs the
    /// answer its headers, not the request its answer.
    fn into_response(self) -> web_sys::Response {
        new_response(self.status, &self.lines, self.body.as_deref()).unwrap_or_else(|error| {
            worker::console_error!("an answer's headers were refused ({error:?}); sent without");
            new_response(self.status, "", None).expect("a status alone makes a response")
        })
    }
}

/// What one request gets back.
pub enum Reply {
    Answer(Answer),
    /// A CORS preflight's answer (it exposes no headers: only actual responses do).
    Preflight(Answer),
    Forwarded(worker::Response),
}

impl Reply {
    pub fn status(&self) -> u16 {
        match self {
            Reply::Answer(answer) | Reply::Preflight(answer) => answer.status,
            Reply::Forwarded(response) => response.status_code(),
        }
    }

    /// Adds `Vary: Origin`: to whatever the origin's response varies on already (the edge's own
    /// answers vary on nothing else).
    pub fn vary_on_origin(&mut self) {
        match self {
            Reply::Answer(answer) | Reply::Preflight(answer) => answer.push("vary", "Origin"),
            Reply::Forwarded(response) => {
                let _ = response.headers_mut().append("vary", "Origin");
            }
        }
    }

    /// Sets `pairs`, replacing any header of the same name the origin sent (the edge's own answers
    /// never carry these).
    pub fn set_headers(&mut self, pairs: &[(&str, &str)]) {
        match self {
            Reply::Answer(answer) | Reply::Preflight(answer) => {
                for (name, value) in pairs {
                    answer.push(name, value);
                }
            }
            Reply::Forwarded(response) => set_headers(response.headers_mut(), pairs),
        }
    }

    pub fn into_response(self) -> web_sys::Response {
        match self {
            Reply::Answer(answer) | Reply::Preflight(answer) => answer.into_response(),
            Reply::Forwarded(response) => response.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Answer;

    #[test]
    fn an_answer_carries_its_headers_as_name_value_lines() {
        let answer = Answer::with_body(200, "application/json", "{}".to_owned())
            .header("cache-control", "no-store");
        assert_eq!(
            answer.lines,
            "content-type\napplication/json\ncache-control\nno-store\n"
        );
        assert_eq!(answer.body.as_deref(), Some("{}"));
    }

    #[test]
    #[should_panic(expected = "lowercase and distinct")]
    fn a_name_given_twice_is_a_bug_caught_in_debug_builds() {
        let _ = Answer::empty(204)
            .header("vary", "Origin")
            .header("vary", "Accept");
    }
}
