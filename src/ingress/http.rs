//! Plain HTTP: a request becomes an envelope and a streamed body for the backend.

use ::http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};

use super::Ingress;
use crate::backend::Invocation;
use crate::body::ResponseBody;
use crate::config::{Config, Mode};
use crate::envelope;
use crate::error::InvokeError;

/// A plain HTTP request as the backend's invocation; done before any await (see [`Ingress::handle`]).
pub fn invocation(ingress: &Ingress, req: Request<Incoming>) -> Result<Invocation, InvokeError> {
    let config = &ingress.config;
    if config.mode == Mode::Classic
        && !matches!(*req.method(), Method::GET | Method::POST | Method::PUT | Method::PATCH | Method::DELETE)
    {
        return Err(InvokeError::MethodNotAllowed);
    }
    let (parts, body) = req.into_parts();
    let content_length = declared_length(&parts, &body);
    if config.max_body_bytes > 0 && content_length > config.max_body_bytes as i64 {
        return Err(InvokeError::BodyTooLarge { limit: config.max_body_bytes });
    }
    let envelope = envelope::from_http(&parts, content_length, ingress.backend.timeout())?;
    if config.debug_headers {
        for h in &envelope.headers {
            tracing::info!(
                "[in] {}=[{}]",
                crate::backend::cgi::canonical_header_key(&h.name),
                String::from_utf8_lossy(&h.value)
            );
        }
    }
    let limits = ingress.body_limits();
    let body = body.map_err(|e| Box::new(e) as crate::body::BoxError).boxed_unsync();
    Ok(Invocation { envelope, body, limits, head: parts, timeout: None, stop_when_abandoned: false })
}

/// The response to a plain HTTP request: the function's answer, or its failure's.
pub fn response(config: &Config, answer: Result<Response<ResponseBody>, InvokeError>) -> Response<ResponseBody> {
    match answer {
        Ok(response) => {
            if config.debug_headers {
                // classic-watchdog prints the headers it set once it has answered (the server adds Date later).
                for (name, value) in response.headers() {
                    let name = crate::backend::cgi::canonical_header_key(name.as_str());
                    tracing::info!("[out] {name}=[{}]", String::from_utf8_lossy(value.as_bytes()));
                }
            }
            response
        }
        Err(error) => {
            if !matches!(error, InvokeError::MethodNotAllowed) {
                tracing::debug!("{error}");
            }
            error.into_http_response()
        }
    }
}

/// Go's ServeMux answer to a request whose path is not clean (`//a`, `/a/./b`, `/a/../b`): 301 to the cleaned
/// path, before any handler sees it (and Go's server's own 200 to `OPTIONS *`); `None` for a clean path and for
/// CONNECT, which ServeMux leaves alone.
pub(super) fn unclean_path_redirect(method: &Method, uri: &::http::Uri) -> Option<Response<ResponseBody>> {
    let path = uri.path();
    if *method == Method::CONNECT {
        return None;
    }
    if path == "*" {
        // `OPTIONS *` asks about the server, not a resource: Go's server answers it itself, 200 and no body.
        let status = if *method == Method::OPTIONS { ::http::StatusCode::OK } else { ::http::StatusCode::BAD_REQUEST };
        return Response::builder().status(status).body(crate::body::empty()).ok();
    }
    let clean = clean_path(path)?;
    let location = match uri.query() {
        Some(query) => format!("{clean}?{query}"),
        None => clean,
    };
    let mut response = Response::builder().status(::http::StatusCode::MOVED_PERMANENTLY);
    if matches!(*method, Method::GET | Method::HEAD) {
        response = response.header(::http::header::CONTENT_TYPE, "text/html; charset=utf-8");
    }
    let body = if *method == Method::GET {
        crate::body::full(format!("<a href=\"{}\">Moved Permanently</a>.\n\n", html_escape(&location)))
    } else {
        crate::body::empty()
    };
    response.header(::http::header::LOCATION, location).body(body).ok()
}

/// The cleaned form of `path` when it differs: Go's `path.Clean` of the rooted path, keeping a trailing slash,
/// as ServeMux's `cleanPath` does.
fn clean_path(path: &str) -> Option<String> {
    let clean_already = path.starts_with('/')
        && !path.contains("//")
        && !path.contains("/./")
        && !path.contains("/../")
        && !path.ends_with("/.")
        && !path.ends_with("/..");
    if clean_already {
        return None;
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut clean = format!("/{}", segments.join("/"));
    if path.ends_with('/') && clean != "/" {
        clean.push('/');
    }
    (clean != path).then_some(clean)
}

/// Go's `htmlEscape` for the redirect body's link.
fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

/// The body length as Go's `Request.ContentLength` gives it: the declared length, 0 for an empty body, -1 when
/// unknown (chunked, or HTTP/2 without content-length).
pub(super) fn declared_length(parts: &::http::request::Parts, body: &Incoming) -> i64 {
    if parts.headers.contains_key(::http::header::TRANSFER_ENCODING) {
        return -1;
    }
    let hint = body.size_hint();
    match hint.exact() {
        Some(n) => n as i64,
        None if body.is_end_stream() => 0,
        None => -1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_clean_as_gos_servemux_cleans_them() {
        for clean in ["/", "/a", "/a/b/", "/a.b/..c", "/_/health", "/a/.b"] {
            assert_eq!(clean_path(clean), None, "{clean}");
        }
        for (path, clean) in [
            ("//double//slash", "/double/slash"),
            ("/a/../b", "/b"),
            ("/a/./b/", "/a/b/"),
            ("/..", "/"),
            ("/a/b/..", "/a"),
            ("/a/b/.", "/a/b"),
            ("/../../x", "/x"),
            ("//", "/"),
        ] {
            assert_eq!(clean_path(path).as_deref(), Some(clean), "{path}");
        }
    }

    #[test]
    fn an_unclean_path_is_redirected_with_its_query() {
        let uri: ::http::Uri = "/a/../b?x=1&y='2'".parse().unwrap();
        let response = unclean_path_redirect(&Method::GET, &uri).unwrap();
        assert_eq!(response.status(), 301);
        assert_eq!(response.headers()[::http::header::LOCATION], "/b?x=1&y='2'");
        assert_eq!(html_escape("/b?x=1&y='2'"), "/b?x=1&amp;y=&#39;2&#39;");
        assert_eq!(response.headers()[::http::header::CONTENT_TYPE], "text/html; charset=utf-8");
        let post = unclean_path_redirect(&Method::POST, &uri).unwrap();
        assert!(!post.headers().contains_key(::http::header::CONTENT_TYPE));
        assert!(unclean_path_redirect(&Method::CONNECT, &uri).is_none());
        let star: ::http::Uri = "*".parse().unwrap();
        assert_eq!(unclean_path_redirect(&Method::OPTIONS, &star).unwrap().status(), 200);
        assert!(unclean_path_redirect(&Method::GET, &"/fine?q=1".parse().unwrap()).is_none());
    }
}
