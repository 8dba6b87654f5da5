//! `mode=static`: files from `static_path`, served as of-watchdog serves them (Go's `http.FileServer`).

mod common;

use common::Server;

async fn start() -> Server {
    let tmp = tempfile::tempdir().unwrap();
    let public = tmp.path().join("public");
    std::fs::create_dir_all(public.join("docs")).unwrap();
    std::fs::create_dir_all(public.join("site")).unwrap();
    std::fs::write(public.join("hello.txt"), "hello, static\n").unwrap();
    std::fs::write(public.join("style.css"), "body {}").unwrap();
    std::fs::write(public.join("noext"), "<html><body>sniffed</body></html>").unwrap();
    std::fs::write(public.join("docs/a b.md"), "# a").unwrap();
    std::fs::write(public.join("site/index.html"), "<h1>index</h1>").unwrap();
    std::fs::write(tmp.path().join("secret"), "outside the root").unwrap();
    let root = public.display().to_string();
    Server::start_in(tmp, &[("mode", "static"), ("static_path", &root)]).await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

#[tokio::test]
async fn files_with_their_types_and_lengths() {
    let server = start().await;
    let resp = client().get(server.url("/hello.txt")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(resp.headers()["content-length"], "14");
    assert!(resp.headers().contains_key("last-modified"));
    assert_eq!(resp.text().await.unwrap(), "hello, static\n");
    let resp = client().get(server.url("/style.css")).send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/css; charset=utf-8");
    let resp = client().get(server.url("/noext")).send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(resp.text().await.unwrap(), "<html><body>sniffed</body></html>");
    let resp = client().head(server.url("/hello.txt")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], "14");
    assert!(resp.bytes().await.unwrap().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn directories_redirect_then_show_index_or_a_listing() {
    let server = start().await;
    let resp = client().get(server.url("/site")).send().await.unwrap();
    assert_eq!(resp.status(), 301);
    assert_eq!(resp.headers()["location"], "site/");
    let resp = client().get(server.url("/site/")).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "<h1>index</h1>");
    let resp = client().get(server.url("/site/index.html")).send().await.unwrap();
    assert_eq!(resp.status(), 301);
    assert_eq!(resp.headers()["location"], "./");
    let resp = client().get(server.url("/docs/")).send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
    let text = resp.text().await.unwrap();
    assert!(text.contains("<a href=\"a%20b.md\">a b.md</a>"), "{text}");
    let resp = client().get(server.url("/docs/a%20b.md")).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "# a");
    server.stop().await;
}

#[tokio::test]
async fn missing_files_and_escapes_are_404() {
    let server = start().await;
    let resp = client().get(server.url("/nope.txt")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.text().await.unwrap(), "404 page not found\n");
    // An unclean path gets Go ServeMux's 301 to its cleaned form, which stays inside the directory.
    let resp = common::raw(server.addr, b"GET /../secret HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!((resp.status, resp.header("location")), (301, Some("/secret")), "{}", resp.text());
    let resp = common::raw(server.addr, b"GET /secret HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(resp.status, 404, "{}", resp.text());
    let resp =
        common::raw(server.addr, b"GET /docs/%2e%2e/%2e%2e/secret HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
    assert_eq!(resp.status, 404, "{}", resp.text());
    // Probes still work and a CloudEvent is just a request for a file.
    assert_eq!(client().get(server.url("/_/health")).send().await.unwrap().status(), 200);
    let resp = client().post(server.url("/hello.txt")).header("ce-specversion", "1.0").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    server.stop().await;
}
