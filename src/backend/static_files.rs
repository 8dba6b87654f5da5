//! `mode=static`: files under `static_path`, served the way of-watchdog serves them (Go's `http.FileServer`):
//! a directory redirects to its trailing-slash form and shows `index.html` or a listing, a missing file is 404,
//! the type comes from the extension or, failing that, from the first bytes.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use http::{header, Method, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use tokio::io::AsyncReadExt;

use super::sniff::detect_content_type;
use super::Invocation;
use crate::body::{self, ResponseBody};
use crate::error::{plain_response, InvokeError};

/// Serves a directory tree.
pub struct StaticBackend {
    root: PathBuf,
}

impl StaticBackend {
    /// Serves `root`.
    pub fn new(root: PathBuf) -> StaticBackend {
        StaticBackend { root }
    }

    /// Static files take no deadline of their own.
    pub fn timeout(&self) -> Option<Duration> {
        None
    }

    /// Answers one request from the file tree.
    pub async fn invoke(self: Arc<Self>, invocation: Invocation) -> Result<Response<ResponseBody>, InvokeError> {
        let Some(http) = invocation.envelope.carrier() else {
            return Ok(not_found());
        };
        let Ok(path) = std::str::from_utf8(&http.path) else {
            return Ok(not_found());
        };
        let Some(relative) = clean(path) else {
            return Ok(not_found());
        };
        let file = self.root.join(&relative);
        let Ok(meta) = tokio::fs::metadata(&file).await else {
            return Ok(not_found());
        };
        let head_only = invocation.head.method == Method::HEAD;
        if meta.is_dir() {
            if !path.ends_with('/') {
                let last = path.rsplit('/').next().unwrap_or_default();
                return Ok(redirect(&format!("{last}/"), &http.query));
            }
            let index = file.join("index.html");
            if tokio::fs::metadata(&index).await.is_ok_and(|m| m.is_file()) {
                return serve_file(&index, head_only).await;
            }
            return listing(&file, head_only).await;
        }
        if path.ends_with("/index.html") {
            return Ok(redirect("./", &http.query));
        }
        serve_file(&file, head_only).await
    }
}

/// The request path as a relative path inside the root, or `None` when it tries to leave it.
fn clean(path: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in Path::new(path.trim_start_matches('/')).components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

async fn serve_file(file: &Path, head_only: bool) -> Result<Response<ResponseBody>, InvokeError> {
    let Ok(mut handle) = tokio::fs::File::open(file).await else {
        return Ok(not_found());
    };
    let meta =
        handle.metadata().await.map_err(|e| InvokeError::Internal(format!("reading {}: {e}", file.display())))?;
    let content_type = match content_type_for(file) {
        Some(known) => known.to_string(),
        None => {
            let mut head = vec![0u8; 512];
            let n = handle.read(&mut head).await.unwrap_or(0);
            head.truncate(n);
            let sniffed = detect_content_type(&head).to_string();
            handle = tokio::fs::File::open(file).await.map_err(|e| InvokeError::Internal(e.to_string()))?;
            sniffed
        }
    };
    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, meta.len())
        .header(header::ACCEPT_RANGES, "bytes");
    if let Ok(modified) = meta.modified() {
        response = response.header(header::LAST_MODIFIED, http_date(modified));
    }
    let body = if head_only {
        body::empty()
    } else {
        let chunks = tokio_util::io::ReaderStream::with_capacity(handle, 64 * 1024).map_ok(Frame::data);
        StreamBody::new(chunks).boxed_unsync()
    };
    Ok(response.body(body).expect("valid response"))
}

/// Go's directory listing: one link per entry, directories with a trailing slash, in name order.
async fn listing(dir: &Path, head_only: bool) -> Result<Response<ResponseBody>, InvokeError> {
    let mut entries = tokio::fs::read_dir(dir).await.map_err(|e| InvokeError::Internal(format!("listing: {e}")))?;
    let mut names = Vec::new();
    while let Ok(Some(entry)) = entries.next_entry().await {
        let mut name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().await.is_ok_and(|t| t.is_dir()) {
            name.push('/');
        }
        names.push(name);
    }
    names.sort();
    let mut html = String::from("<!doctype html>\n<meta name=\"viewport\" content=\"width=device-width\">\n<pre>\n");
    for name in names {
        let text = escape_html(&name);
        html.push_str(&format!("<a href=\"{}\">{text}</a>\n", escape_html(&percent_encode_path(&name))));
    }
    html.push_str("</pre>\n");
    let response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(header::CONTENT_LENGTH, html.len());
    let body = if head_only { body::empty() } else { body::full(html) };
    Ok(response.body(body).expect("valid response"))
}

fn not_found() -> Response<ResponseBody> {
    plain_response(StatusCode::NOT_FOUND, "404 page not found\n".into())
}

fn redirect(location: &str, query: &str) -> Response<ResponseBody> {
    let location = if query.is_empty() { location.to_string() } else { format!("{location}?{query}") };
    Response::builder()
        .status(StatusCode::MOVED_PERMANENTLY)
        .header(header::LOCATION, location)
        .body(body::empty())
        .expect("valid response")
}

/// The type for well-known extensions, as Go's `mime` package knows them.
fn content_type_for(file: &Path) -> Option<&'static str> {
    let ext = file.extension()?.to_str()?.to_ascii_lowercase();
    Some(match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "xml" => "text/xml; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/vnd.microsoft.icon",
        "pdf" => "application/pdf",
        "wasm" => "application/wasm",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        _ => return None,
    })
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&#34;").replace('\'', "&#39;")
}

fn percent_encode_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/!$&'()*+,;=:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An IMF-fixdate (`Tue, 15 Nov 1994 08:12:31 GMT`), as HTTP dates are written.
fn http_date(time: std::time::SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let secs = time.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let days = secs / 86400;
    let (h, m, s) = ((secs % 86400) / 3600, (secs % 3600) / 60, secs % 60);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{}, {day:02} {} {year} {h:02}:{m:02}:{s:02} GMT", DAYS[(days % 7) as usize], MONTHS[(month - 1) as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cannot_leave_the_root() {
        assert_eq!(clean("/a/b/../c.txt"), Some(PathBuf::from("a/c.txt")));
        assert_eq!(clean("/"), Some(PathBuf::new()));
        assert_eq!(clean("/../etc/passwd"), None);
        assert_eq!(clean("/a/../../x"), None);
    }

    #[test]
    fn http_dates() {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(784_887_151);
        assert_eq!(http_date(t), "Tue, 15 Nov 1994 08:12:31 GMT");
        assert_eq!(http_date(std::time::UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
    }

    #[test]
    fn types_by_extension() {
        assert_eq!(content_type_for(Path::new("a/INDEX.HTML")), Some("text/html; charset=utf-8"));
        assert_eq!(content_type_for(Path::new("a/b")), None);
    }
}
