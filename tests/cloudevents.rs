//! CloudEvents over HTTP in the fork modes, end to end against the real server (SPEC §6): detection, validation,
//! the `CE_*` variables, reply events, batches, Knative's retry codes and `cloudevents=off`.

mod common;

use common::{script, Binary, Server};
use reqwest::header::HeaderMap;

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// A binary-mode request with the three required attributes.
fn binary(server: &Server, body: &'static str) -> reqwest::RequestBuilder {
    client()
        .post(server.url("/"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "evt-1")
        .header("ce-source", "/test/source")
        .header("ce-type", "com.example.created")
        .header("content-type", "text/plain")
        .body(body)
}

/// A POST of `body` with Content-Type `content_type` (structured and batched events).
async fn post_as(server: &Server, content_type: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
    client().post(server.url("/")).header("content-type", content_type).body(body).send().await.unwrap()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).map(|v| v.to_str().unwrap()).unwrap_or_else(|| panic!("no {name} header in {headers:?}"))
}

#[tokio::test]
async fn binary_event_gets_a_binary_reply_with_the_defaults() {
    let server = Server::start(&[("fprocess", "cat")]).await;
    let resp = binary(&server, "hello").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(header(&h, "ce-specversion"), "1.0");
    assert_eq!(header(&h, "ce-source"), "/fwatchdog");
    assert_eq!(header(&h, "ce-type"), "com.example.created.reply");
    assert_eq!(header(&h, "content-type"), "text/plain");
    let id = header(&h, "ce-id");
    assert!(!id.is_empty() && id != "evt-1", "a reply needs a fresh id, got {id}");
    assert_eq!(resp.text().await.unwrap(), "hello");
    server.stop().await;
}

#[tokio::test]
async fn reply_source_and_type_are_configurable() {
    let server =
        Server::start(&[("fprocess", "cat"), ("ce_reply_source", "/orders"), ("ce_reply_type", "com.example.done")])
            .await;
    let resp = binary(&server, "x").send().await.unwrap();
    assert_eq!(header(resp.headers(), "ce-source"), "/orders");
    assert_eq!(header(resp.headers(), "ce-type"), "com.example.done");
    server.stop().await;
}

#[tokio::test]
async fn no_output_is_202_with_an_empty_body() {
    let server = Server::start(&[("fprocess", "true")]).await;
    let resp = binary(&server, "ignored").send().await.unwrap();
    assert_eq!(resp.status(), 202);
    assert!(resp.headers().get("ce-id").is_none());
    assert_eq!(resp.bytes().await.unwrap().len(), 0);
    server.stop().await;
}

#[tokio::test]
async fn the_function_sees_ce_variables_and_http_variables() {
    let tmp = tempfile::tempdir().unwrap();
    let f = script(tmp.path(), "f.sh", "env | grep -E '^(CE_|Http_)' | sort");
    let server = Server::start_in(tmp, &[("fprocess", f.to_str().unwrap()), ("cgi_headers", "false")]).await;
    let resp = binary(&server, "")
        .header("ce-time", "2024-05-01T12:00:00.5+02:00")
        .header("ce-subject", "caf%C3%A9%20au%20lait")
        .header("ce-myext", "raw 100%")
        .header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("CE_ID=evt-1\n"), "{text}");
    assert!(text.contains("CE_SOURCE=/test/source\n"), "{text}");
    assert!(text.contains("CE_TYPE=com.example.created\n"), "{text}");
    assert!(text.contains("CE_SPECVERSION=1.0\n"), "{text}");
    assert!(text.contains("CE_DATACONTENTTYPE=text/plain\n"), "{text}");
    // Exactly as sent: not normalised to UTC.
    assert!(text.contains("CE_TIME=2024-05-01T12:00:00.5+02:00\n"), "{text}");
    // Percent-decoded once; a bare % is kept.
    assert!(text.contains("CE_SUBJECT=café au lait\n"), "{text}");
    assert!(text.contains("CE_MYEXT=raw 100%\n"), "{text}");
    // cgi_headers=false turns off Http_*, never CE_*.
    assert!(!text.contains("Http_"), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn http_ce_variables_are_still_set_with_cgi_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let f = script(tmp.path(), "f.sh", "env | grep -E '^Http_' | sort");
    let server = Server::start_in(tmp, &[("fprocess", f.to_str().unwrap())]).await;
    let text = binary(&server, "").send().await.unwrap().text().await.unwrap();
    assert!(text.contains("Http_Ce_Id=evt-1\n"), "{text}");
    assert!(text.contains("Http_Method=POST\n"), "{text}");
    assert!(text.contains("Http_Path=/\n"), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn missing_or_empty_required_attribute_is_400_naming_it() {
    let server = Server::start(&[("fprocess", "cat")]).await;
    let resp = client()
        .post(server.url("/"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "1")
        .header("ce-type", "t")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("source"));
    let resp = binary(&server, "").header("ce-id", "").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("id"));
    server.stop().await;
}

#[tokio::test]
async fn bad_specversion_time_and_datacontenttype_header_are_400() {
    let server = Server::start(&[("fprocess", "cat")]).await;
    let resp = binary(&server, "").header("ce-specversion", "2.0").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("specversion"));
    let resp = binary(&server, "").header("ce-time", "yesterday").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("time"));
    let resp = binary(&server, "").header("ce-datacontenttype", "text/plain").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    server.stop().await;
}

#[tokio::test]
async fn structured_mode_delivers_exact_json_data_and_decoded_base64() {
    let tmp = tempfile::tempdir().unwrap();
    let f = script(tmp.path(), "f.sh", "cat; echo; echo \"$Http_Content_Type|$CE_TIME\"");
    let server = Server::start_in(tmp, &[("fprocess", f.to_str().unwrap())]).await;
    let doc = r#"{"specversion":"1.0","id":"s1","source":"/s","type":"t","time":"2024-01-01T00:00:00+05:30",
        "datacontenttype":"application/json","data":{"b": 2,  "a":[1, 2.50]}}"#;
    let resp = post_as(&server, "Application/CloudEvents+JSON; charset=utf-8", doc).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(resp.headers(), "ce-type"), "t.reply");
    assert_eq!(header(resp.headers(), "content-type"), "application/json");
    let text = resp.text().await.unwrap();
    assert_eq!(text, "{\"b\": 2,  \"a\":[1, 2.50]}\napplication/json|2024-01-01T00:00:00+05:30\n");

    let doc = r#"{"specversion":"1.0","id":"s2","source":"/s","type":"t","data_base64":"AAEC/w=="}"#;
    let bytes = post_as(&server, "application/cloudevents+json", doc).await.bytes().await.unwrap();
    assert_eq!(&bytes[..5], &[0, 1, 2, 255, b'\n']);
    server.stop().await;
}

#[tokio::test]
async fn unsupported_structured_format_is_415_and_bad_json_400() {
    let server = Server::start(&[("fprocess", "cat")]).await;
    let resp = post_as(&server, "application/cloudevents+xml", "<event/>").await;
    assert_eq!(resp.status(), 415);
    let resp = post_as(&server, "application/cloudevents+json", "{not json").await;
    assert_eq!(resp.status(), 400);
    server.stop().await;
}

#[tokio::test]
async fn structured_body_over_the_limit_is_413() {
    let server = Server::start(&[("fprocess", "cat"), ("max_body_bytes", "100")]).await;
    let doc = format!(r#"{{"specversion":"1.0","id":"1","source":"/s","type":"t","data":"{}"}}"#, "x".repeat(200));
    assert_eq!(post_as(&server, "application/cloudevents+json", doc).await.status(), 413);
    server.stop().await;
}

#[tokio::test]
async fn failures_follow_knatives_retry_table() {
    let tmp = tempfile::tempdir().unwrap();
    let fail = script(tmp.path(), "fail.sh", "echo partial; echo secret-stderr >&2; exit 3");
    let server = Server::start_in(tmp, &[("fprocess", fail.to_str().unwrap())]).await;
    let resp = binary(&server, "").send().await.unwrap();
    assert_eq!(resp.status(), 500);
    assert!(resp.headers().get("ce-id").is_none());
    let text = resp.text().await.unwrap();
    assert!(text.contains("exit status 3"), "{text}");
    assert!(!text.contains("secret-stderr") && !text.contains("partial"), "{text}");
    server.stop().await;

    let server = Server::start(&[("fprocess", "sleep 5"), ("exec_timeout", "200ms")]).await;
    assert_eq!(binary(&server, "").send().await.unwrap().status(), 504);
    server.stop().await;
}

#[tokio::test]
async fn stderr_never_reaches_the_reply_even_with_combine_output() {
    let tmp = tempfile::tempdir().unwrap();
    let f = script(tmp.path(), "f.sh", "echo out; echo err >&2");
    let server = Server::start_in(tmp, &[("fprocess", f.to_str().unwrap()), ("combine_output", "true")]).await;
    let resp = binary(&server, "").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "out\n");
    server.stop().await;
}

#[tokio::test]
async fn batch_invokes_each_event_in_order_and_replies_with_a_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("order.log");
    let f = script(
        tmp.path(),
        "f.sh",
        &format!(
            "echo \"$CE_ID\" >> {}; if [ \"$CE_ID\" = quiet ]; then exit 0; fi; printf 'r-%s' \"$CE_ID\"",
            log.display()
        ),
    );
    let server = Server::start_in(tmp, &[("fprocess", f.to_str().unwrap())]).await;
    let doc = r#"[{"specversion":"1.0","id":"a","source":"/s","type":"t","data":"1"},
                 {"specversion":"1.0","id":"quiet","source":"/s","type":"t"},
                 {"specversion":"0.3","id":"b","source":"/s","type":"u","datacontenttype":"text/plain","data":"2"}]"#;
    let resp = post_as(&server, "application/cloudevents-batch+json", doc).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(resp.headers(), "content-type"), "application/cloudevents-batch+json");
    let replies: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let replies = replies.as_array().unwrap();
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert_eq!(replies[0]["type"], "t.reply");
    assert_eq!(replies[0]["data"], "r-a");
    assert_eq!(replies[1]["specversion"], "0.3");
    assert_eq!(replies[1]["type"], "u.reply");
    assert_eq!(replies[1]["data"], "r-b");
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "a\nquiet\nb\n");
    server.stop().await;
}

#[tokio::test]
async fn batch_stops_at_the_first_failing_event() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("order.log");
    let f = script(tmp.path(), "f.sh", &format!("echo \"$CE_ID\" >> {}; [ \"$CE_ID\" != bad ]", log.display()));
    let server = Server::start_in(tmp, &[("fprocess", f.to_str().unwrap())]).await;
    let doc = r#"[{"specversion":"1.0","id":"ok","source":"/s","type":"t"},
                 {"specversion":"1.0","id":"bad","source":"/s","type":"t"},
                 {"specversion":"1.0","id":"never","source":"/s","type":"t"}]"#;
    let resp = post_as(&server, "application/cloudevents-batch+json", doc).await;
    assert_eq!(resp.status(), 500);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "ok\nbad\n");
    server.stop().await;
}

#[tokio::test]
async fn cloudevents_off_is_plain_classic_http() {
    let server = Server::start(&[("fprocess", "cat"), ("cloudevents", "off")]).await;
    let resp = binary(&server, "hello").header("ce-id", "").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("ce-id").is_none());
    assert!(resp.headers().contains_key("x-duration-seconds"));
    assert_eq!(resp.text().await.unwrap(), "hello");
    server.stop().await;
}

#[tokio::test]
async fn only_post_is_inspected() {
    let server = Server::start(&[("fprocess", "cat")]).await;
    let resp = client().get(server.url("/")).header("ce-specversion", "1.0").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("ce-id").is_none());
    server.stop().await;
}

#[tokio::test]
async fn reply_header_values_are_percent_encoded() {
    let tmp = tempfile::tempdir().unwrap();
    let f = script(tmp.path(), "f.sh", "printf x");
    let server = Server::start_in(tmp, &[("fprocess", f.to_str().unwrap()), ("ce_reply_source", "/a b/café")]).await;
    let resp = binary(&server, "").send().await.unwrap();
    assert_eq!(header(resp.headers(), "ce-source"), "/a%20b/caf%C3%A9");
    server.stop().await;
}

#[tokio::test]
async fn cloudevents_count_as_their_own_protocol_in_metrics() {
    let (binary, metrics_port) = Binary::start_with_metrics(&[("fprocess", "cat")]).await;
    let resp = client()
        .post(binary.url("/"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "1")
        .header("ce-source", "/s")
        .header("ce-type", "t")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    client().post(binary.url("/")).body("plain").send().await.unwrap().bytes().await.unwrap();
    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let text = client().get(&metrics_url).send().await.unwrap().text().await.unwrap();
    assert!(text.contains(r#"watchdog_invocations_total{protocol="cloudevent",code="200"} 1"#), "{text}");
    assert!(text.contains(r#"watchdog_invocations_total{protocol="http",code="200"} 1"#), "{text}");
}

#[tokio::test]
async fn streaming_mode_holds_a_reply_until_exit_so_a_failure_is_500() {
    let tmp = tempfile::tempdir().unwrap();
    let f = script(tmp.path(), "f.sh", "echo partial; exit 4");
    let server = Server::start_in(tmp, &[("fprocess", f.to_str().unwrap()), ("mode", "streaming")]).await;
    let resp = binary(&server, "").send().await.unwrap();
    assert_eq!(resp.status(), 500);
    assert!(resp.headers().get("ce-id").is_none());
    server.stop().await;
}
