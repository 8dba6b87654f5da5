use super::*;

fn parse(pairs: &[(&str, &str)]) -> (Config, Vec<Warning>) {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Config::from_source(&map).expect("valid config")
}

fn parse_err(pairs: &[(&str, &str)]) -> ConfigError {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Config::from_source(&map).expect_err("invalid config")
}

fn warned(warnings: &[Warning], variable: &str) -> bool {
    warnings.iter().any(|w| w.variable == variable)
}

#[test]
fn classic_defaults_match_classic_watchdog() {
    let (c, warnings) = parse(&[("fprocess", "cat")]);
    assert!(warnings.is_empty());
    assert_eq!(c.mode, Mode::Classic);
    assert_eq!(c.fprocess, vec!["cat"]);
    assert_eq!(c.port, 8080);
    assert_eq!(c.read_timeout, Duration::from_secs(30));
    assert_eq!(c.write_timeout, Duration::from_secs(30));
    assert_eq!(c.healthcheck_interval, Duration::from_secs(30));
    assert_eq!(c.exec_timeout, Duration::ZERO);
    assert!(!c.write_debug);
    assert!(c.cgi_headers);
    assert!(c.combine_output);
    assert!(!c.marshal_request);
    assert!(!c.debug_headers);
    assert!(!c.suppress_lock);
    assert_eq!(c.content_type, None);
    assert_eq!(c.max_inflight, 0);
    assert_eq!(c.metrics_port, Some(8081));
    assert_eq!(c.workers, 1);
    assert_eq!(c.max_body_bytes, 0);
    assert_eq!(c.cloudevents, CloudEventsMode::Auto);
    assert_eq!(c.ce_reply_source, "/fwatchdog");
    assert_eq!(c.ce_reply_type, None);
    assert_eq!(c.log_format, LogFormat::Text);
    assert_eq!(c.grpc_max_message_bytes, 4 * 1024 * 1024);
    assert_eq!(c.log_buffer_size, 65536);
    assert!(c.prefix_logs);
    assert_eq!(c.tmp_dir, PathBuf::from("/tmp"));
    assert_eq!(c.lock_path(), PathBuf::from("/tmp/.lock"));
    assert_eq!(c.static_path, PathBuf::from("/home/app/public"));
}

#[test]
fn of_watchdog_defaults_in_other_modes() {
    for mode in ["streaming", "serializing", "http"] {
        let (c, _) = parse(&[("fprocess", "cat"), ("mode", mode)]);
        assert_eq!(c.mode.as_str(), mode);
        assert_eq!(c.exec_timeout, Duration::from_secs(30), "{mode}");
        assert_eq!(c.content_type.as_deref(), Some("application/octet-stream"), "{mode}");
    }
}

#[test]
fn fprocess_is_split_on_single_spaces_without_a_shell() {
    let (c, _) = parse(&[("fprocess", "sh -c 'echo hi'")]);
    assert_eq!(c.fprocess, vec!["sh", "-c", "'echo", "hi'"]);
    let (c, _) = parse(&[("fprocess", "a  b")]);
    assert_eq!(c.fprocess, vec!["a", "", "b"]);
}

#[test]
fn function_process_wins_over_fprocess() {
    let (c, _) = parse(&[("fprocess", "cat"), ("function_process", "env")]);
    assert_eq!(c.fprocess, vec!["env"]);
}

#[test]
fn upstream_url_aliases() {
    let (c, _) = parse(&[("fprocess", "x"), ("mode", "http"), ("upstream_url", "http://127.0.0.1:3000")]);
    assert_eq!(c.upstream_url.as_deref(), Some("http://127.0.0.1:3000"));
    let (c, _) =
        parse(&[("fprocess", "x"), ("mode", "http"), ("upstream_url", "http://a"), ("http_upstream_url", "http://b")]);
    assert_eq!(c.upstream_url.as_deref(), Some("http://b"));
}

#[test]
fn durations_follow_the_int_or_go_duration_rule() {
    let (c, w) =
        parse(&[("fprocess", "cat"), ("read_timeout", "5"), ("write_timeout", "1m30s"), ("exec_timeout", "100ms")]);
    assert!(w.is_empty());
    assert_eq!(c.read_timeout, Duration::from_secs(5));
    assert_eq!(c.write_timeout, Duration::from_secs(90));
    assert_eq!(c.healthcheck_interval, Duration::from_secs(90), "healthcheck_interval defaults to write_timeout");
    assert_eq!(c.exec_timeout, Duration::from_millis(100));
    let (c, _) = parse(&[("fprocess", "cat"), ("healthcheck_interval", "0")]);
    assert_eq!(c.healthcheck_interval, Duration::ZERO);
}

#[test]
fn invalid_classic_values_fall_back_with_a_warning() {
    let (c, w) = parse(&[
        ("fprocess", "cat"),
        ("read_timeout", "soon"),
        ("write_timeout", "-5"),
        ("exec_timeout", "10x"),
        ("healthcheck_interval", "later"),
        ("max_inflight", "-1"),
        ("port", "http"),
        ("log_buffer_size", "big"),
    ]);
    assert_eq!(c.read_timeout, Duration::from_secs(30));
    assert_eq!(c.write_timeout, Duration::from_secs(30));
    assert_eq!(c.exec_timeout, Duration::ZERO);
    assert_eq!(c.healthcheck_interval, Duration::from_secs(30));
    assert_eq!(c.max_inflight, 0);
    assert_eq!(c.port, 8080);
    assert_eq!(c.log_buffer_size, 65536);
    for var in [
        "read_timeout",
        "write_timeout",
        "exec_timeout",
        "healthcheck_interval",
        "max_inflight",
        "port",
        "log_buffer_size",
    ] {
        assert!(warned(&w, var), "no warning for {var}: {w:?}");
    }
}

#[test]
fn classic_booleans_accept_only_true() {
    let (c, w) = parse(&[
        ("fprocess", "cat"),
        ("write_debug", "true"),
        ("cgi_headers", "1"),
        ("combine_output", "false"),
        ("marshal_request", "TRUE"),
        ("debug_headers", "true"),
        ("suppress_lock", "true"),
    ]);
    assert!(c.write_debug);
    assert!(!c.cgi_headers, "classic treats 1 as false for a set variable");
    assert!(!c.combine_output);
    assert!(!c.marshal_request);
    assert!(c.debug_headers);
    assert!(c.suppress_lock);
    assert!(warned(&w, "cgi_headers"));
    assert!(warned(&w, "marshal_request"));
    assert!(!warned(&w, "combine_output"));
}

#[test]
fn of_watchdog_booleans_accept_true_and_1() {
    let (c, _) = parse(&[("fprocess", "cat"), ("mode", "streaming"), ("suppress_lock", "1"), ("buffer_http", "true")]);
    assert!(c.suppress_lock);
    assert!(c.buffer_http);
    let (c, _) = parse(&[("fprocess", "cat"), ("mode", "http"), ("http_buffer_req_body", "1")]);
    assert!(c.buffer_http);
    let (c, _) = parse(&[("fprocess", "cat"), ("prefix_logs", "F")]);
    assert!(!c.prefix_logs);
    let (c, w) = parse(&[("fprocess", "cat"), ("prefix_logs", "nope")]);
    assert!(c.prefix_logs);
    assert!(warned(&w, "prefix_logs"));
}

#[test]
fn content_type_override() {
    let (c, _) = parse(&[("fprocess", "cat"), ("content_type", "application/json")]);
    assert_eq!(c.content_type.as_deref(), Some("application/json"));
    let (c, _) = parse(&[("fprocess", "cat"), ("mode", "streaming"), ("content_type", "text/plain")]);
    assert_eq!(c.content_type.as_deref(), Some("text/plain"));
}

#[test]
fn port_falls_back_to_knative_port() {
    let (c, _) = parse(&[("fprocess", "cat"), ("PORT", "9090")]);
    assert_eq!(c.port, 9090);
    let (c, _) = parse(&[("fprocess", "cat"), ("PORT", "9090"), ("port", "7070")]);
    assert_eq!(c.port, 7070);
}

#[test]
fn tmpdir_places_the_lock_file() {
    let (c, _) = parse(&[("fprocess", "cat"), ("TMPDIR", "/var/run/fn")]);
    assert_eq!(c.lock_path(), PathBuf::from("/var/run/fn/.lock"));
}

#[test]
fn new_variables_are_parsed() {
    // An empty file is a valid (empty) FileDescriptorSet.
    let fds = tempfile::NamedTempFile::new().unwrap();
    let fds_path = fds.path().to_str().unwrap().to_string();
    let (c, _) = parse(&[
        ("fprocess", "cat"),
        ("metrics_port", "0"),
        ("workers", "3"),
        ("max_body_bytes", "1048576"),
        ("cloudevents", "off"),
        ("ce_reply_source", "/src"),
        ("ce_reply_type", "t.reply"),
        ("log_format", "json"),
        ("grpc_descriptor_set", &fds_path),
        ("grpc_max_message_bytes", "1024"),
        ("watchdog_threads", "4"),
    ]);
    assert_eq!(c.metrics_port, None);
    assert_eq!(c.runtime_threads(), 4);
    assert_eq!(c.workers, 3);
    assert_eq!(c.max_body_bytes, 1_048_576);
    assert_eq!(c.cloudevents, CloudEventsMode::Off);
    assert_eq!(c.ce_reply_source, "/src");
    assert_eq!(c.ce_reply_type.as_deref(), Some("t.reply"));
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.grpc_descriptor_set, Some(PathBuf::from(&fds_path)));
    assert_eq!(c.grpc_max_message_bytes, 1024);
}

#[test]
fn runtime_threads_follow_the_mode_unless_set() {
    let threads = |pairs: &[(&str, &str)]| parse(pairs).0.runtime_threads();
    // 0: one per CPU, for fork modes, whose thread blocks while a child starts.
    for mode in ["classic", "streaming", "serializing"] {
        assert_eq!(threads(&[("fprocess", "cat"), ("mode", mode)]), 0, "{mode}");
    }
    assert_eq!(threads(&[("fprocess", "cat"), ("mode", "http")]), 1);
    assert_eq!(threads(&[("mode", "static")]), 1);
    assert_eq!(threads(&[("fprocess", "cat"), ("mode", "http"), ("watchdog_threads", "3")]), 3);
    assert_eq!(threads(&[("fprocess", "cat"), ("watchdog_threads", "1")]), 1);
}

#[test]
fn invalid_new_variables_name_the_variable() {
    for (var, value) in [
        ("metrics_port", "abc"),
        ("metrics_port", "70000"),
        ("workers", "-1"),
        ("workers", "0"),
        ("max_body_bytes", "1MB"),
        ("cloudevents", "on"),
        ("log_format", "xml"),
        ("grpc_max_message_bytes", "0"),
        ("grpc_descriptor_set", "/no/such/descriptor.binpb"),
        ("grpc_descriptor_set", "/proc/self/status"),
        ("watchdog_threads", "-2"),
        ("watchdog_threads", "many"),
    ] {
        let err = parse_err(&[("fprocess", "cat"), (var, value)]);
        assert!(err.to_string().contains(var), "{var}={value}: {err}");
    }
}

#[test]
fn unsupported_modes_and_settings_stop_start_up() {
    assert!(parse_err(&[("fprocess", "cat"), ("mode", "inproc")]).to_string().contains("mode"));
    assert!(parse_err(&[("fprocess", "cat"), ("mode", "afterburn")]).to_string().contains("mode"));
    assert!(parse_err(&[("fprocess", "cat"), ("jwt_auth", "true")]).to_string().contains("jwt_auth"));
    assert!(parse_err(&[("fprocess", "cat"), ("mode", "http"), ("jwt_auth", "1")]).to_string().contains("jwt_auth"));
    // A classic boolean is true only as `true`: `1` is off, with a warning, and nothing to refuse.
    let (_, w) = parse(&[("fprocess", "cat"), ("jwt_auth", "1")]);
    assert!(warned(&w, "jwt_auth"));
    assert!(parse_err(&[]).to_string().contains("fprocess"));
    assert!(parse_err(&[("fprocess", "")]).to_string().contains("fprocess"));
    // Only a missing line is missing: " cat" has an empty program and fails per request, as in the originals.
    let (c, _) = parse(&[("fprocess", " cat")]);
    assert_eq!(c.fprocess, ["", "cat"]);
    assert!(parse_err(&[("mode", "streaming")]).to_string().contains("fprocess"));
    let err = parse_err(&[("fprocess", "x"), ("mode", "http"), ("upstream_url", "http://a"), ("workers", "2")]);
    assert!(err.to_string().contains("workers"));
    // static mode needs no process.
    let (c, _) = parse(&[("mode", "static")]);
    assert_eq!(c.mode, Mode::Static);
}

#[test]
fn empty_values_count_as_unset() {
    let (c, w) = parse(&[("fprocess", "cat"), ("write_timeout", ""), ("cgi_headers", ""), ("mode", "")]);
    assert!(w.is_empty());
    assert_eq!(c.write_timeout, Duration::from_secs(30));
    assert!(c.cgi_headers);
    assert_eq!(c.mode, Mode::Classic);
}

#[test]
fn help_lists_every_variable() {
    let help = Config::help_text();
    for var in VARIABLES {
        assert!(help.contains(var.name), "{}", var.name);
    }
    for name in ["fprocess", "exec_timeout", "max_body_bytes", "grpc_max_message_bytes", "metrics_port"] {
        assert!(help.contains(name));
    }
}

#[test]
fn request_timeout_is_the_nearer_limit() {
    let (c, _) = parse(&[("fprocess", "cat"), ("exec_timeout", "5"), ("write_timeout", "10")]);
    assert_eq!(c.request_timeout(), Some(Duration::from_secs(5)));
    let (c, _) = parse(&[("fprocess", "cat"), ("exec_timeout", "0"), ("write_timeout", "10")]);
    assert_eq!(c.request_timeout(), Some(Duration::from_secs(10)));
    let (c, _) = parse(&[("fprocess", "cat"), ("exec_timeout", "0"), ("write_timeout", "0")]);
    assert_eq!(c.request_timeout(), None);
}
