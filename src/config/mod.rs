//! Configuration: every classic-watchdog and of-watchdog variable, with their defaults and parsing, plus ours.
//!
//! Parsed from any key/value source (the process environment in `main`, a map in tests). Classic variables
//! keep the originals' lenient rules: an invalid value falls back to the default with a [`Warning`]. Our own
//! variables are strict: an invalid value is a [`ConfigError`] and start-up stops (exit 2).

mod duration;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use duration::{format_go_duration, parse_duration};

/// How requests reach the function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Classic watchdog: one process per request, output held until exit.
    Classic,
    /// of-watchdog streaming fork mode: stdin and stdout streamed.
    Streaming,
    /// of-watchdog serializing fork mode: output held until exit, of-watchdog's status rules.
    Serializing,
    /// Long-lived function process (framed protocol, or a reverse proxy with `upstream_url`).
    Http,
    /// Serve files from `static_path`.
    Static,
}

impl Mode {
    /// The value of `mode` that selects this mode.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Classic => "classic",
            Mode::Streaming => "streaming",
            Mode::Serializing => "serializing",
            Mode::Http => "http",
            Mode::Static => "static",
        }
    }

    /// One process per request (classic, streaming, serializing).
    pub fn is_fork(self) -> bool {
        matches!(self, Mode::Classic | Mode::Streaming | Mode::Serializing)
    }
}

/// Whether CloudEvents are recognised on the HTTP ingress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudEventsMode {
    /// Detect CloudEvents by content type and `ce-specversion` (SPEC §6).
    Auto,
    /// Treat every request as plain HTTP, exactly as the classic watchdog.
    Off,
}

/// Format of the watchdog's own log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Go `log`-style lines, like the original watchdogs.
    Text,
    /// One JSON object per line.
    Json,
}

/// The complete watchdog configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Operational mode (`mode`).
    pub mode: Mode,
    /// The function's command line (`function_process`, else `fprocess`), split on single spaces.
    pub fprocess: Vec<String>,
    /// TCP port of the main listener (`port`, else `PORT`, else 8080).
    pub port: u16,
    /// Limit for reading a request's headers and body (`read_timeout`; zero: none).
    pub read_timeout: Duration,
    /// Limit for producing a response (`write_timeout`; zero: none); also the SIGTERM drain limit.
    pub write_timeout: Duration,
    /// Limit on one function run (`exec_timeout`; zero: none).
    pub exec_timeout: Duration,
    /// Wait between SIGTERM and closing the listener (`healthcheck_interval`, default `write_timeout`).
    pub healthcheck_interval: Duration,
    /// Copy function output to the watchdog's log (`write_debug`).
    pub write_debug: bool,
    /// Pass request headers as `Http_*` environment variables (`cgi_headers`).
    pub cgi_headers: bool,
    /// Return stderr in the response along with stdout, classic mode (`combine_output`).
    pub combine_output: bool,
    /// Send the request to stdin as the classic JSON envelope (`marshal_request`).
    pub marshal_request: bool,
    /// Print request and response headers to stdout (`debug_headers`).
    pub debug_headers: bool,
    /// Do not write the lock file (`suppress_lock`).
    pub suppress_lock: bool,
    /// Response Content-Type override (`content_type`); `None`: the mode's default behaviour.
    pub content_type: Option<String>,
    /// Most requests running plus waiting at once (`max_inflight`; 0: no limit).
    pub max_inflight: usize,
    /// Upstream HTTP server for http mode (`upstream_url` / `http_upstream_url`).
    pub upstream_url: Option<String>,
    /// Path on the function to ask for readiness (`ready_path`).
    pub ready_path: Option<String>,
    /// Prefix function log lines with the stream's name (`prefix_logs`).
    pub prefix_logs: bool,
    /// Longest function log line kept whole, in bytes (`log_buffer_size`).
    pub log_buffer_size: usize,
    /// Buffer the request body before proxying it, http mode (`buffer_http` / `http_buffer_req_body`).
    pub buffer_http: bool,
    /// Directory served in static mode (`static_path`).
    pub static_path: PathBuf,
    /// Port of the metrics listener (`metrics_port`; `None` when 0: disabled).
    pub metrics_port: Option<u16>,
    /// Number of function processes in http mode (`workers`).
    pub workers: usize,
    /// Largest accepted request body (`max_body_bytes`; 0: unlimited).
    pub max_body_bytes: u64,
    /// CloudEvents detection (`cloudevents`).
    pub cloudevents: CloudEventsMode,
    /// `source` of reply events (`ce_reply_source`).
    pub ce_reply_source: String,
    /// `type` of reply events (`ce_reply_type`); `None`: the request's type + `.reply`.
    pub ce_reply_type: Option<String>,
    /// Log line format (`log_format`).
    pub log_format: LogFormat,
    /// FileDescriptorSet with the user's gRPC services (`grpc_descriptor_set`).
    pub grpc_descriptor_set: Option<PathBuf>,
    /// Largest gRPC message, either direction (`grpc_max_message_bytes`).
    pub grpc_max_message_bytes: usize,
    /// Threads of the watchdog's own runtime (`watchdog_threads`; 0: chosen by mode, see [`Config::runtime_threads`]).
    pub watchdog_threads: usize,
    /// Directory of the lock file and temporary files (`TMPDIR`, else `/tmp`).
    pub tmp_dir: PathBuf,
    /// http-mode worker timing (restart backoff, pings); not an environment variable: tests shorten it.
    pub worker_timing: crate::backend::framed::pool::Timing,
}

/// A classic variable whose value was not understood; the default was used instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The variable's name.
    pub variable: &'static str,
    /// What was wrong and what was used instead.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.variable, self.message)
    }
}

/// A configuration that cannot start (exit 2).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A variable has a value we cannot accept.
    #[error("invalid value {value:?} for {variable}: {reason}")]
    Invalid {
        /// The variable's name.
        variable: &'static str,
        /// The value given.
        value: String,
        /// Why it is rejected.
        reason: String,
    },
    /// A variable that the chosen mode needs is missing.
    #[error("{variable} is required: {reason}")]
    Missing {
        /// The variable's name.
        variable: &'static str,
        /// What needs it.
        reason: String,
    },
}

/// One documented variable, for `--help`.
pub struct VariableDoc {
    /// The variable's name.
    pub name: &'static str,
    /// Its default, as text.
    pub default: &'static str,
    /// What it does.
    pub meaning: &'static str,
}

/// Every variable we read, with its default and meaning; `--help` prints this table.
pub const VARIABLES: &[VariableDoc] = &[
    VariableDoc {
        name: "fprocess",
        default: "(none)",
        meaning: "the function's command line, split on single spaces, no shell",
    },
    VariableDoc { name: "function_process", default: "(none)", meaning: "same as fprocess; wins when both are set" },
    VariableDoc { name: "mode", default: "classic", meaning: "classic | streaming | serializing | http | static" },
    VariableDoc {
        name: "port",
        default: "$PORT, else 8080",
        meaning: "TCP port for HTTP, HTTP/2 and gRPC (dual-stack)",
    },
    VariableDoc {
        name: "read_timeout",
        default: "30s",
        meaning: "limit on reading a request (seconds or Go duration; 0: none)",
    },
    VariableDoc {
        name: "write_timeout",
        default: "30s",
        meaning: "limit on answering a request; also the SIGTERM drain limit",
    },
    VariableDoc {
        name: "exec_timeout",
        default: "0 classic, 30s other modes",
        meaning: "limit on one function run; the process group is killed (0: none)",
    },
    VariableDoc {
        name: "healthcheck_interval",
        default: "write_timeout",
        meaning: "wait after SIGTERM before new requests are refused",
    },
    VariableDoc { name: "write_debug", default: "false", meaning: "copy function output to the log" },
    VariableDoc {
        name: "cgi_headers",
        default: "true",
        meaning: "pass request headers as Http_* environment variables",
    },
    VariableDoc {
        name: "combine_output",
        default: "true",
        meaning: "classic: stderr joins stdout in the response (else it is logged)",
    },
    VariableDoc {
        name: "marshal_request",
        default: "false",
        meaning: "classic: stdin is a JSON object with the headers and the base64 body",
    },
    VariableDoc { name: "debug_headers", default: "false", meaning: "print request and response headers" },
    VariableDoc { name: "suppress_lock", default: "false", meaning: "do not write the lock file $TMPDIR/.lock" },
    VariableDoc {
        name: "content_type",
        default: "request's type classic, application/octet-stream other modes",
        meaning: "Content-Type of every response",
    },
    VariableDoc {
        name: "max_inflight",
        default: "0",
        meaning: "most concurrent requests; beyond it 429 (0: no limit)",
    },
    VariableDoc {
        name: "upstream_url",
        default: "(none)",
        meaning: "http mode: reverse-proxy to this HTTP server (alias http_upstream_url)",
    },
    VariableDoc {
        name: "ready_path",
        default: "(none)",
        meaning: "/_/ready also asks the function for GET <ready_path>",
    },
    VariableDoc { name: "prefix_logs", default: "true", meaning: "prefix function log lines with the stream name" },
    VariableDoc {
        name: "log_buffer_size",
        default: "65536",
        meaning: "longest function log line kept whole, in bytes",
    },
    VariableDoc {
        name: "buffer_http",
        default: "false",
        meaning: "http mode: buffer the request body before proxying (alias http_buffer_req_body)",
    },
    VariableDoc { name: "static_path", default: "/home/app/public", meaning: "static mode: directory to serve" },
    VariableDoc { name: "metrics_port", default: "8081", meaning: "port of GET /metrics (0: disabled)" },
    VariableDoc { name: "workers", default: "1", meaning: "http mode: number of function processes" },
    VariableDoc { name: "max_body_bytes", default: "0", meaning: "largest request body; beyond it 413 (0: unlimited)" },
    VariableDoc { name: "cloudevents", default: "auto", meaning: "auto | off: recognise CloudEvents on HTTP" },
    VariableDoc { name: "ce_reply_source", default: "/fwatchdog", meaning: "source of reply events" },
    VariableDoc { name: "ce_reply_type", default: "request type + .reply", meaning: "type of reply events" },
    VariableDoc { name: "log_format", default: "text", meaning: "text | json" },
    VariableDoc {
        name: "grpc_descriptor_set",
        default: "(none)",
        meaning: "FileDescriptorSet whose services appear in gRPC reflection",
    },
    VariableDoc {
        name: "grpc_max_message_bytes",
        default: "4194304",
        meaning: "largest gRPC message in either direction",
    },
    VariableDoc {
        name: "watchdog_threads",
        default: "0",
        meaning: "threads serving requests (0: one per CPU in fork modes, else 1, as the function does the work)",
    },
    VariableDoc { name: "TMPDIR", default: "/tmp", meaning: "directory of the lock file and of spilled output" },
];

/// Looks up variables by name; implemented for maps and closures.
pub trait Source {
    /// The variable's value, `None` when unset.
    fn get(&self, key: &str) -> Option<String>;
}

impl Source for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

impl<F: Fn(&str) -> Option<String>> Source for F {
    fn get(&self, key: &str) -> Option<String> {
        self(key)
    }
}

/// Reads variables and collects warnings for classic variables with invalid values.
struct Reader<'a> {
    source: &'a dyn Source,
    warnings: Vec<Warning>,
}

impl Reader<'_> {
    /// The value, with unset treated like empty as Go's `os.Getenv` does.
    fn get(&self, key: &str) -> Option<String> {
        self.source.get(key).filter(|v| !v.is_empty())
    }

    fn warn(&mut self, variable: &'static str, value: &str, fallback: impl fmt::Display) {
        self.warnings.push(Warning { variable, message: format!("cannot parse {value:?}, using {fallback}") });
    }

    fn duration(&mut self, key: &'static str, fallback: Duration) -> Duration {
        match self.get(key) {
            None => fallback,
            Some(value) => parse_duration(&value).unwrap_or_else(|| {
                self.warn(key, &value, format_go_duration(fallback));
                fallback
            }),
        }
    }

    fn count(&mut self, key: &'static str, fallback: usize) -> usize {
        match self.get(key) {
            None => fallback,
            Some(value) => value.parse::<usize>().unwrap_or_else(|_| {
                self.warn(key, &value, fallback);
                fallback
            }),
        }
    }

    /// Classic rule: only `true` is true; an unset (or empty) variable keeps the default.
    fn classic_bool(&mut self, key: &'static str, fallback: bool) -> bool {
        match self.get(key) {
            None => fallback,
            Some(value) => {
                if value != "true" && value != "false" {
                    self.warn(key, &value, false);
                }
                value == "true"
            }
        }
    }

    /// of-watchdog rule: `true` or `1` is true, anything else is false; unset keeps the default.
    fn of_bool(&mut self, key: &'static str, fallback: bool) -> bool {
        match self.get(key) {
            None => fallback,
            Some(value) => {
                let truthy = value == "true" || value == "1";
                if !truthy && value != "false" && value != "0" {
                    self.warn(key, &value, false);
                }
                truthy
            }
        }
    }

    /// Go's `strconv.ParseBool`, keeping the default on an invalid value (of-watchdog's `prefix_logs`).
    fn go_parse_bool(&mut self, key: &'static str, fallback: bool) -> bool {
        match self.get(key).as_deref() {
            None => fallback,
            Some("1" | "t" | "T" | "TRUE" | "true" | "True") => true,
            Some("0" | "f" | "F" | "FALSE" | "false" | "False") => false,
            Some(value) => {
                let value = value.to_string();
                self.warn(key, &value, fallback);
                fallback
            }
        }
    }

    fn bool_for(&mut self, mode: Mode, key: &'static str, fallback: bool) -> bool {
        if mode == Mode::Classic {
            self.classic_bool(key, fallback)
        } else {
            self.of_bool(key, fallback)
        }
    }

    /// A strict number for our own variables.
    fn strict_number<T: std::str::FromStr>(&self, key: &'static str, fallback: T) -> Result<T, ConfigError> {
        match self.get(key) {
            None => Ok(fallback),
            Some(value) => value.trim().parse::<T>().map_err(|_| ConfigError::Invalid {
                variable: key,
                reason: "expected a non-negative whole number".into(),
                value,
            }),
        }
    }
}

impl Config {
    /// Reads the configuration from `source`. Returns the warnings for classic variables that fell back.
    pub fn from_source(source: &dyn Source) -> Result<(Config, Vec<Warning>), ConfigError> {
        let mut r = Reader { source, warnings: Vec::new() };

        let mode = match r.get("mode").as_deref() {
            None | Some("classic") => Mode::Classic,
            Some("streaming") => Mode::Streaming,
            Some("serializing") => Mode::Serializing,
            Some("http") => Mode::Http,
            Some("static") => Mode::Static,
            Some(other) => {
                let reason = if other == "inproc" {
                    "inproc mode is not supported; use http mode for a long-lived process".to_string()
                } else {
                    "expected classic, streaming, serializing, http or static".to_string()
                };
                return Err(ConfigError::Invalid { variable: "mode", value: other.to_string(), reason });
            }
        };
        let classic = mode == Mode::Classic;

        if r.bool_for(mode, "jwt_auth", false) {
            return Err(ConfigError::Invalid {
                variable: "jwt_auth",
                value: r.get("jwt_auth").unwrap_or_default(),
                reason: "OpenFaaS IAM (JWT) authentication is not supported; refusing to start rather than \
                         serve a function that was meant to be protected"
                    .into(),
            });
        }

        let process_line = r.get("function_process").or_else(|| r.get("fprocess"));
        // Split on single spaces with no shell, as strings.Split(fprocess, " ") does: "a  b" has an empty argument.
        let fprocess: Vec<String> =
            process_line.as_deref().map(|line| line.split(' ').map(str::to_string).collect()).unwrap_or_default();

        let upstream_url = r.get("http_upstream_url").or_else(|| r.get("upstream_url"));
        // http mode starts (and restarts) the upstream server too, so only static mode runs without a process.
        // Only an unset or empty line is missing, as in the originals: " cat" starts, and fails per request.
        if mode != Mode::Static && process_line.as_deref().is_none_or(str::is_empty) {
            return Err(ConfigError::Missing {
                variable: "fprocess",
                reason: format!("mode {} runs a function process; set fprocess (or function_process)", mode.as_str()),
            });
        }

        let port = match r.get("port") {
            Some(value) => match value.parse::<u16>() {
                Ok(port) => port,
                Err(_) => {
                    let fallback = knative_port(&r).unwrap_or(8080);
                    r.warn("port", &value, fallback);
                    fallback
                }
            },
            None => knative_port(&r).unwrap_or(8080),
        };

        // Both originals default to 30s; only classic leaves exec_timeout off.
        let default_timeout = Duration::from_secs(30);
        let read_timeout = r.duration("read_timeout", default_timeout);
        let write_timeout = r.duration("write_timeout", default_timeout);
        let healthcheck_interval = r.duration("healthcheck_interval", write_timeout);
        let exec_timeout = r.duration("exec_timeout", if classic { Duration::ZERO } else { default_timeout });

        let write_debug = r.bool_for(mode, "write_debug", false);
        let cgi_headers = r.bool_for(mode, "cgi_headers", true);
        let combine_output = r.bool_for(mode, "combine_output", true);
        let marshal_request = r.bool_for(mode, "marshal_request", false);
        let debug_headers = r.bool_for(mode, "debug_headers", false);
        let suppress_lock = r.bool_for(mode, "suppress_lock", false);
        let prefix_logs = r.go_parse_bool("prefix_logs", true);
        let buffer_http = r.of_bool("buffer_http", false) || r.of_bool("http_buffer_req_body", false);

        let content_type = match r.source.get("content_type") {
            Some(value) if !value.is_empty() => Some(value),
            _ if classic => None,
            _ => Some("application/octet-stream".to_string()),
        };

        let max_inflight = r.count("max_inflight", 0);
        let log_buffer_size = r.count("log_buffer_size", 64 * 1024).max(1);
        let ready_path = r.get("ready_path");
        let static_path = PathBuf::from(r.get("static_path").unwrap_or_else(|| "/home/app/public".into()));
        let tmp_dir = PathBuf::from(r.get("TMPDIR").unwrap_or_else(|| "/tmp".into()));

        // Our own variables: strict.
        let metrics_port = match r.strict_number::<u16>("metrics_port", 8081)? {
            0 => None,
            port => Some(port),
        };
        let workers = r.strict_number::<usize>("workers", 1)?;
        if workers == 0 {
            return Err(ConfigError::Invalid {
                variable: "workers",
                value: "0".into(),
                reason: "at least one worker is needed".into(),
            });
        }
        if upstream_url.is_some() && workers > 1 && mode == Mode::Http {
            return Err(ConfigError::Invalid {
                variable: "workers",
                value: workers.to_string(),
                reason: "upstream_url proxies to one server process; workers must be 1".into(),
            });
        }
        let max_body_bytes = r.strict_number::<u64>("max_body_bytes", 0)?;
        let cloudevents = match r.get("cloudevents").as_deref() {
            None | Some("auto") => CloudEventsMode::Auto,
            Some("off") => CloudEventsMode::Off,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    variable: "cloudevents",
                    value: other.into(),
                    reason: "expected auto or off".into(),
                })
            }
        };
        let ce_reply_source = r.get("ce_reply_source").unwrap_or_else(|| "/fwatchdog".into());
        let ce_reply_type = r.get("ce_reply_type");
        let log_format = match r.get("log_format").as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    variable: "log_format",
                    value: other.into(),
                    reason: "expected text or json".into(),
                })
            }
        };
        let grpc_descriptor_set = r.get("grpc_descriptor_set").map(PathBuf::from);
        if let Some(path) = &grpc_descriptor_set {
            // Checked now so a bad file stops start-up (exit 2) instead of silently serving without the services.
            let invalid = |reason: String| ConfigError::Invalid {
                variable: "grpc_descriptor_set",
                value: path.display().to_string(),
                reason,
            };
            let bytes = std::fs::read(path).map_err(|e| invalid(format!("cannot read it: {e}")))?;
            <prost_types::FileDescriptorSet as prost::Message>::decode(bytes.as_slice())
                .map_err(|e| invalid(format!("not an encoded FileDescriptorSet: {e}")))?;
        }
        let grpc_max_message_bytes = r.strict_number::<usize>("grpc_max_message_bytes", 4 * 1024 * 1024)?;
        if grpc_max_message_bytes == 0 {
            return Err(ConfigError::Invalid {
                variable: "grpc_max_message_bytes",
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }

        let watchdog_threads = r.strict_number::<usize>("watchdog_threads", 0)?;

        let config = Config {
            mode,
            fprocess,
            port,
            read_timeout,
            write_timeout,
            exec_timeout,
            healthcheck_interval,
            write_debug,
            cgi_headers,
            combine_output,
            marshal_request,
            debug_headers,
            suppress_lock,
            content_type,
            max_inflight,
            upstream_url,
            ready_path,
            prefix_logs,
            log_buffer_size,
            buffer_http,
            static_path,
            metrics_port,
            workers,
            max_body_bytes,
            cloudevents,
            ce_reply_source,
            ce_reply_type,
            log_format,
            grpc_descriptor_set,
            grpc_max_message_bytes,
            watchdog_threads,
            tmp_dir,
            worker_timing: Default::default(),
        };
        Ok((config, r.warnings))
    }

    /// Reads the configuration from a map; for tests and embedding.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_source(&map).map(|(config, _)| config)
    }

    /// How many threads the runtime should have; 0 means one per CPU. Fork modes default to one per CPU, as
    /// starting a process blocks the thread that starts it until the child has called exec. Every other mode
    /// defaults to one: the function's own processes do the work, and a single thread that forwards requests
    /// spends nothing on waking other threads or moving tasks between them, which on a small container costs
    /// more than a second thread gains (README's http-mode benchmark: about a fifth more requests per second).
    pub fn runtime_threads(&self) -> usize {
        match self.watchdog_threads {
            0 if self.mode.is_fork() => 0,
            0 => 1,
            n => n,
        }
    }

    /// A timeout variable as a limit: zero means none.
    pub fn limit(timeout: Duration) -> Option<Duration> {
        (!timeout.is_zero()).then_some(timeout)
    }

    /// The deadline of one request: the nearer of `exec_timeout` and `write_timeout`, if either is set.
    pub fn request_timeout(&self) -> Option<Duration> {
        match (Config::limit(self.exec_timeout), Config::limit(self.write_timeout)) {
            (Some(exec), Some(write)) => Some(exec.min(write)),
            (exec, write) => exec.or(write),
        }
    }

    /// Path of the lock file, `$TMPDIR/.lock`.
    pub fn lock_path(&self) -> PathBuf {
        self.tmp_dir.join(".lock")
    }

    /// Text of `--help`: every variable, its default and meaning.
    pub fn help_text() -> String {
        let mut out = String::from(
            "fwatchdog: serves a function over HTTP/1.1 and HTTP/2 (h2c) on one port, as the OpenFaaS watchdogs do.\n\n\
             Usage: fwatchdog [-version] [-run-healthcheck] [--help]\n\n\
             Configuration is read from environment variables:\n\n",
        );
        let width = VARIABLES.iter().map(|v| v.name.len()).max().unwrap_or(0);
        for var in VARIABLES {
            out.push_str(&format!("  {:width$}  {} (default: {})\n", var.name, var.meaning, var.default));
        }
        out
    }
}

/// Knative's `PORT`, when it is a valid port.
fn knative_port(r: &Reader<'_>) -> Option<u16> {
    r.get("PORT").and_then(|p| p.parse().ok())
}

#[cfg(test)]
mod tests;
