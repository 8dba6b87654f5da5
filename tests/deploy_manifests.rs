//! The deployment examples in `examples/knative/` checked against the watchdog they deploy and against each
//! other: ports, probe paths, variable names and values, modes, names shared between manifests, and the
//! Dockerfiles the Tekton Task writes. A manifest that drifts from the code fails here, not in someone's cluster.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use ng_watchdog::config::{parse_duration, Config, VARIABLES};
use serde_yaml_ng::Value;

/// The watchdog's readiness endpoint, which Kubernetes, Knative and OpenFaaS probe (SPEC §2).
const READY_PATH: &str = "/_/ready";
/// The watchdog's liveness endpoint (SPEC §2).
const HEALTH_PATH: &str = "/_/health";
/// The event type the example's Trigger routes to the function.
const ORDER_CREATED: &str = "com.example.order.created";

/// The directory of the examples under test.
fn knative_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/knative")
}

/// A file of `examples/knative/`, as text.
fn read(name: &str) -> String {
    let path = knative_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every document of a (possibly multi-document) YAML file.
fn yaml_documents(name: &str) -> Vec<Value> {
    let text = read(name);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| {
            // serde itself is not a dependency, so its Deserialize trait cannot be named here; singleton_map's
            // deserialize is a public entry point that reads any value (it only changes how enums are read).
            serde_yaml_ng::with::singleton_map::deserialize::<Value, _>(document)
                .unwrap_or_else(|e| panic!("{name}: {e}"))
        })
        .collect()
}

/// The single document of a YAML file.
fn yaml(name: &str) -> Value {
    let mut documents = yaml_documents(name);
    assert_eq!(documents.len(), 1, "{name}: expected one YAML document");
    documents.remove(0)
}

/// The node at a dotted path (`spec.containers.0.image`: numbers index sequences); panics naming the path.
fn at<'a>(value: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(value, |node, key| {
        let next = match key.parse::<usize>() {
            Ok(index) if node.is_sequence() => node.get(index),
            _ => node.get(key),
        };
        next.unwrap_or_else(|| panic!("missing {path} (at {key:?})"))
    })
}

/// A scalar as text, as Kubernetes and faas-cli hand it to the container (YAML `false` and `30` included).
fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => panic!("expected a scalar, found {other:?}"),
    }
}

/// The text at a dotted path.
fn text_at(value: &Value, path: &str) -> String {
    scalar(at(value, path))
}

/// The elements of the sequence at a dotted path.
fn seq_at<'a>(value: &'a Value, path: &str) -> &'a [Value] {
    at(value, path).as_sequence().unwrap_or_else(|| panic!("{path} is not a sequence"))
}

/// The port the watchdog listens on when nothing overrides it: what every manifest must expose.
fn default_port() -> u16 {
    Config::from_pairs([("fprocess", "cat")]).expect("minimal configuration").port
}

/// Checks that `env` names only variables the watchdog reads and makes a configuration that starts without a
/// single warning (a classic variable with a bad value would silently fall back to its default); returns it.
fn check_env(context: &str, env: &[(String, String)]) -> Config {
    // Knative sets PORT; the watchdog reads it when `port` is unset. Everything else is in the --help table.
    let known: BTreeSet<&str> = VARIABLES.iter().map(|v| v.name).chain(["PORT"]).collect();
    for (name, _) in env {
        assert!(known.contains(name.as_str()), "{context}: {name} is not a variable the watchdog knows");
    }
    let map: HashMap<String, String> = env.iter().cloned().collect();
    let (config, warnings) =
        Config::from_source(&map).unwrap_or_else(|e| panic!("{context}: the watchdog would not start: {e}"));
    assert!(warnings.is_empty(), "{context}: {warnings:?}");
    if let Some(mode) = map.get("mode") {
        assert_eq!(config.mode.as_str(), mode, "{context}: mode");
    }
    config
}

/// The value of one variable in an environment list.
fn env_value<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A duration variable as the watchdog parses it.
fn duration(context: &str, env: &[(String, String)], name: &str) -> Duration {
    let value = env_value(env, name).unwrap_or_else(|| panic!("{context}: {name} is not set"));
    parse_duration(value).unwrap_or_else(|| panic!("{context}: {name}={value} is not a duration"))
}

// ---- Dockerfiles ----

/// One Dockerfile instruction: keyword in upper case, arguments with continuation lines joined.
#[derive(Debug, Clone)]
struct Instruction {
    keyword: String,
    args: String,
}

/// Splits a Dockerfile into instructions (comments dropped, `\` continuations joined), enough for our files.
fn parse_dockerfile(text: &str) -> Vec<Instruction> {
    let mut instructions = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        // Comment lines may sit between continuation lines too; Docker drops them there as well.
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head);
                pending.push(' ');
            }
            None => {
                pending.push_str(trimmed);
                let (keyword, args) = pending.split_once(char::is_whitespace).unwrap_or((&pending, ""));
                instructions.push(Instruction { keyword: keyword.to_uppercase(), args: args.trim().to_string() });
                pending.clear();
            }
        }
    }
    assert!(pending.is_empty(), "Dockerfile ends inside a continuation");
    instructions
}

/// The stages of a Dockerfile: each starts with its FROM.
fn stages(instructions: &[Instruction]) -> Vec<&[Instruction]> {
    let starts: Vec<usize> =
        instructions.iter().enumerate().filter(|(_, i)| i.keyword == "FROM").map(|(n, _)| n).collect();
    assert!(!starts.is_empty(), "Dockerfile without FROM");
    starts
        .iter()
        .enumerate()
        .map(|(n, &start)| &instructions[start..*starts.get(n + 1).unwrap_or(&instructions.len())])
        .collect()
}

/// Splits on whitespace outside double quotes, removing the quotes (as `ENV a="b c"` is read).
fn shell_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut started = false;
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                started = true;
            }
            c if c.is_whitespace() && !quoted => {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            c => {
                word.push(c);
                started = true;
            }
        }
    }
    assert!(!quoted, "unbalanced quotes in {text:?}");
    if started {
        words.push(word);
    }
    words
}

/// The arguments of every instruction with this keyword in a stage.
fn all<'a>(stage: &'a [Instruction], keyword: &str) -> Vec<&'a str> {
    stage.iter().filter(|i| i.keyword == keyword).map(|i| i.args.as_str()).collect()
}

/// The arguments of the one instruction with this keyword in a stage.
fn one<'a>(stage: &'a [Instruction], keyword: &str) -> &'a str {
    match all(stage, keyword)[..] {
        [args] => args,
        ref found => panic!("expected one {keyword}, found {found:?}"),
    }
}

/// A stage's environment, from `ENV k=v ...` (and the legacy `ENV k v`).
fn dockerfile_env(stage: &[Instruction]) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for args in all(stage, "ENV") {
        let words = shell_words(args);
        if !words[0].contains('=') {
            env.push((words[0].clone(), words[1..].join(" ")));
            continue;
        }
        for word in words {
            let (k, v) = word.split_once('=').unwrap_or_else(|| panic!("ENV {args}: {word} has no ="));
            env.push((k.to_string(), v.to_string()));
        }
    }
    env
}

/// An exec-form command (`["a", "b"]`) as its words.
fn exec_form(context: &str, args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("{context}: {args:?} is not exec form: {e}"))
}

/// `COPY` instructions of a stage as (`--from` stage or None, sources, destination).
fn copies(stage: &[Instruction]) -> Vec<(Option<String>, Vec<String>, String)> {
    all(stage, "COPY")
        .into_iter()
        .map(|args| {
            let mut words = shell_words(args);
            let from = words.iter().find_map(|w| w.strip_prefix("--from=")).map(str::to_string);
            words.retain(|w| !w.starts_with("--"));
            let destination = words.pop().expect("COPY destination");
            (from, words, destination)
        })
        .collect()
}

/// Whether a stage puts a file at `path`, copied there directly or into a directory that holds it.
fn copies_to(stage: &[Instruction], path: &str) -> bool {
    copies(stage).iter().any(|(_, _, dest)| dest == path || (dest.ends_with('/') && path.starts_with(dest.as_str())))
}

/// Checks what every function image needs, whatever its language; returns the image's environment.
fn check_function_stage(context: &str, stage: &[Instruction]) -> Vec<(String, String)> {
    // fwatchdog is the entrypoint, found on PATH where OpenFaaS images keep it.
    assert!(copies_to(stage, "/usr/bin/fwatchdog"), "{context}: fwatchdog is not copied to /usr/bin/fwatchdog");
    assert!(all(stage, "ENTRYPOINT").is_empty(), "{context}: an ENTRYPOINT would wrap fwatchdog");
    assert_eq!(exec_form(context, one(stage, "CMD")), ["fwatchdog"], "{context}: CMD");

    let exposed: Vec<u16> = shell_words(one(stage, "EXPOSE"))
        .iter()
        .map(|p| p.trim_end_matches("/tcp").parse().unwrap_or_else(|_| panic!("{context}: EXPOSE {p}")))
        .collect();
    assert_eq!(exposed, [default_port()], "{context}: EXPOSE must be the watchdog's port");

    // A numeric non-zero USER, so Kubernetes can verify runAsNonRoot (service.yaml sets it).
    let user = one(stage, "USER");
    let uid: u32 = user.split(':').next().unwrap().parse().unwrap_or_else(|_| panic!("{context}: USER {user}"));
    assert_ne!(uid, 0, "{context}: runs as root");

    let healthcheck = one(stage, "HEALTHCHECK");
    let probe = healthcheck.split_once("CMD").map(|(_, cmd)| cmd.trim()).expect("HEALTHCHECK CMD");
    assert_eq!(exec_form(context, probe), ["fwatchdog", "-run-healthcheck"], "{context}: HEALTHCHECK");

    let env = dockerfile_env(stage);
    let config = check_env(context, &env);
    assert_eq!(default_port(), config.port, "{context}: the image must not move the port away from EXPOSE");
    // The function is part of the image, where fprocess says it is.
    let program = &config.fprocess[0];
    if program.starts_with('/') {
        assert!(copies_to(stage, program), "{context}: fprocess runs {program}, which the image does not contain");
    }
    env
}

#[test]
fn dockerfile_builds_the_watchdog_and_a_function_image() {
    let context = "examples/knative/Dockerfile";
    let instructions = parse_dockerfile(&read("Dockerfile"));
    let stages = stages(&instructions);
    assert_eq!(stages.len(), 3, "{context}: build, watchdog and function stages");

    // Stage 1: the stock rust image, the locked build, the static binary.
    let build = stages[0];
    assert!(one(build, "FROM").starts_with("rust:"), "{context}: build stage image");
    assert!(one(build, "FROM").ends_with(" AS build"));
    assert!(all(build, "RUN").iter().any(|r| r.contains("cargo build --release --locked")), "{context}: cargo build");

    // Stage 2: what the Tekton Task takes from WATCHDOG_IMAGE.
    let watchdog = stages[1];
    assert_eq!(one(watchdog, "FROM"), "scratch AS watchdog");
    let watchdog_copies = copies(watchdog);
    assert!(watchdog_copies.contains(&(
        Some("build".into()),
        vec!["/src/target/release/fwatchdog".into()],
        "/usr/bin/fwatchdog".into()
    )));
    assert!(watchdog_copies.contains(&(None, vec!["sdk/python".into()], "/opt/watchdog-sdk/python".into())));
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(repo.join("sdk/python/pyproject.toml").exists(), "the SDK the image copies is pip-installable");

    // Stage 3: the function image, and the function in it.
    let function = stages[2];
    let env = check_function_stage(context, function);
    let fprocess = env_value(&env, "fprocess").unwrap();
    let (_, sources, _) = copies(function)
        .into_iter()
        .find(|(from, _, dest)| from.is_none() && dest == fprocess)
        .unwrap_or_else(|| panic!("{context}: nothing copies the function to {fprocess}"));
    let script = repo.join(&sources[0]);
    let mode = std::fs::metadata(&script).unwrap_or_else(|e| panic!("{}: {e}", script.display())).permissions().mode();
    assert!(mode & 0o111 != 0, "{} must be executable: fprocess runs it directly", script.display());
}

// ---- Knative Serving ----

/// service.yaml's one container.
fn service_container(service: &Value) -> &Value {
    let containers = seq_at(service, "spec.template.spec.containers");
    assert_eq!(containers.len(), 1, "service.yaml: one container");
    &containers[0]
}

/// A Kubernetes `env:` list as pairs.
fn kubernetes_env(container: &Value) -> Vec<(String, String)> {
    seq_at(container, "env").iter().map(|e| (text_at(e, "name"), text_at(e, "value"))).collect()
}

/// The function image's environment as the Dockerfile sets it.
fn image_env() -> Vec<(String, String)> {
    let instructions = parse_dockerfile(&read("Dockerfile"));
    dockerfile_env(stages(&instructions).last().unwrap())
}

#[test]
fn knative_service_matches_the_watchdog() {
    let service = yaml("service.yaml");
    assert_eq!(text_at(&service, "apiVersion"), "serving.knative.dev/v1");
    assert_eq!(text_at(&service, "kind"), "Service");
    let container = service_container(&service);

    let ports = seq_at(container, "ports");
    assert_eq!(ports.len(), 1, "service.yaml: Knative routes to one port");
    let port = text_at(&ports[0], "containerPort");
    assert_eq!(port, default_port().to_string(), "service.yaml: containerPort must be the watchdog's port");

    for (probe, path) in [("readinessProbe", READY_PATH), ("livenessProbe", HEALTH_PATH)] {
        assert_eq!(text_at(container, &format!("{probe}.httpGet.path")), path, "service.yaml: {probe}");
        // Knative only accepts a probe port equal to the container port; omitting it means the same.
        if let Some(probe_port) = at(container, probe).get("httpGet").and_then(|g| g.get("port")) {
            assert_eq!(scalar(probe_port), port, "service.yaml: {probe} port");
        }
    }

    let env = kubernetes_env(container);
    assert!(env_value(&env, "PORT").is_none(), "service.yaml: Knative reserves PORT and sets it itself");
    let config = check_env("service.yaml", &env);
    assert_eq!(config.port.to_string(), port, "service.yaml: the watchdog must listen on containerPort");

    // The Service runs the image of ./Dockerfile: the same function, the same mode.
    let image = image_env();
    for name in ["fprocess", "mode"] {
        assert_eq!(env_value(&env, name), env_value(&image, name), "service.yaml and Dockerfile disagree on {name}");
    }

    // Knative's own request timeout must outlast the watchdog's, so the watchdog gets to answer.
    let exec = duration("service.yaml", &env, "exec_timeout");
    let write = duration("service.yaml", &env, "write_timeout");
    let knative = Duration::from_secs(at(&service, "spec.template.spec.timeoutSeconds").as_u64().unwrap());
    assert!(exec <= write && write < knative, "service.yaml: want exec_timeout <= write_timeout < timeoutSeconds");

    assert_eq!(at(container, "securityContext.runAsNonRoot").as_bool(), Some(true));
}

// ---- Knative Eventing ----

#[test]
fn broker_and_triggers_reach_the_service_without_a_loop() {
    let service = yaml("service.yaml");
    let service_name = text_at(&service, "metadata.name");
    let service_env = kubernetes_env(service_container(&service));
    let documents = yaml_documents("broker-trigger.yaml");
    let of_kind = |kind: &str| -> Vec<&Value> { documents.iter().filter(|d| text_at(d, "kind") == kind).collect() };

    let brokers = of_kind("Broker");
    assert_eq!(brokers.len(), 1);
    assert_eq!(text_at(brokers[0], "apiVersion"), "eventing.knative.dev/v1");
    let broker = text_at(brokers[0], "metadata.name");
    assert_eq!(broker, "default");

    // Services a trigger may deliver to: the function, and any defined beside the triggers.
    let mut services: BTreeSet<String> = of_kind("Service").iter().map(|s| text_at(s, "metadata.name")).collect();
    services.insert(service_name.clone());

    let triggers = of_kind("Trigger");
    let mut routed = Vec::new();
    for trigger in &triggers {
        let name = text_at(trigger, "metadata.name");
        assert_eq!(text_at(trigger, "apiVersion"), "eventing.knative.dev/v1", "trigger {name}");
        assert_eq!(text_at(trigger, "spec.broker"), broker, "trigger {name}: broker");
        assert_eq!(text_at(trigger, "spec.subscriber.ref.apiVersion"), "serving.knative.dev/v1", "trigger {name}");
        assert_eq!(text_at(trigger, "spec.subscriber.ref.kind"), "Service", "trigger {name}");
        let subscriber = text_at(trigger, "spec.subscriber.ref.name");
        assert!(services.contains(&subscriber), "trigger {name}: no Service named {subscriber}");
        routed.push((text_at(trigger, "spec.filter.attributes.type"), subscriber));
    }
    assert!(routed.contains(&(ORDER_CREATED.to_string(), service_name.clone())), "no trigger sends {ORDER_CREATED}");

    // The watchdog's replies go back to the broker; a trigger that matched them would feed the function its own
    // output forever. Reply type: ce_reply_type, else the request's type + ".reply".
    let reply_type = |request_type: &str| -> String {
        env_value(&service_env, "ce_reply_type").map_or_else(|| format!("{request_type}.reply"), str::to_string)
    };
    for (event_type, subscriber) in &routed {
        if subscriber == &service_name {
            let reply = reply_type(event_type);
            assert!(
                !routed.iter().any(|(t, s)| t == &reply && s == &service_name),
                "replies of type {reply} would be routed back to {service_name}"
            );
        }
    }
    let reply = reply_type(ORDER_CREATED);
    assert!(routed.iter().any(|(t, s)| t == &reply && s != &service_name), "no trigger shows the {reply} replies");
}

// ---- OpenFaaS ----

#[test]
fn openfaas_stack_deploys_the_same_image() {
    let stack = yaml("stack.yml");
    assert!(matches!(scalar(at(&stack, "version")).as_str(), "1.0" | "1"), "stack.yml: version 1.0");
    assert_eq!(text_at(&stack, "provider.name"), "openfaas");
    assert_eq!(text_at(&stack, "provider.gateway"), "http://127.0.0.1:8080");

    let functions = at(&stack, "functions").as_mapping().expect("functions");
    assert_eq!(functions.len(), 1);
    let function = functions.values().next().unwrap();
    let service = yaml("service.yaml");
    assert_eq!(text_at(function, "image"), text_at(service_container(&service), "image"), "stack.yml: image");

    let env: Vec<(String, String)> = at(function, "environment")
        .as_mapping()
        .expect("environment")
        .iter()
        .map(|(k, v)| (scalar(k), scalar(v)))
        .collect();
    let config = check_env("stack.yml", &env);
    let image = image_env();
    for name in ["fprocess", "mode"] {
        assert_eq!(env_value(&env, name), env_value(&image, name), "stack.yml and Dockerfile disagree on {name}");
    }
    // OpenFaaS's lock-file probe (`cat /tmp/.lock`) and `fwatchdog -run-healthcheck` need the lock file there.
    assert!(!config.suppress_lock, "stack.yml: suppress_lock defeats the lock-file probe");
    assert_eq!(config.tmp_dir.join(".lock"), Path::new("/tmp/.lock"), "stack.yml: the lock file must be /tmp/.lock");
    assert_eq!(config.port, default_port(), "stack.yml: OpenFaaS routes to 8080");

    // The annotation names contain dots, so they are looked up directly rather than through a dotted path.
    let annotations = at(function, "annotations");
    for (annotation, path) in
        [("com.openfaas.health.http.path", HEALTH_PATH), ("com.openfaas.ready.http.path", READY_PATH)]
    {
        assert_eq!(annotations.get(annotation).map(scalar).as_deref(), Some(path), "stack.yml: {annotation}");
    }
}

// ---- Tekton ----

/// The text of a heredoc in a shell script: the lines after the one ending `<<'MARKER'`, up to `MARKER`.
fn heredoc(script: &str, marker: &str) -> String {
    let opening = format!("<<'{marker}'");
    let mut lines = script.lines().skip_while(|l| !l.trim_end().ends_with(&opening));
    assert!(lines.next().is_some(), "no heredoc {marker}");
    let body: Vec<&str> = lines.by_ref().take_while(|l| *l != marker).collect();
    body.join("\n")
}

/// Checks one Dockerfile the Task writes; returns its function stage's environment.
fn check_generated_dockerfile(context: &str, text: &str, mode: &str, fprocess: &str) -> Vec<(String, String)> {
    let instructions = parse_dockerfile(text);
    let stages = stages(&instructions);
    assert_eq!(one(stages[0], "FROM"), "$(params.WATCHDOG_IMAGE) AS watchdog", "{context}: first stage");
    let function = *stages.last().unwrap();
    assert!(
        copies(function).contains(&(
            Some("watchdog".into()),
            vec!["/usr/bin/fwatchdog".into()],
            "/usr/bin/fwatchdog".into()
        )),
        "{context}: fwatchdog must come from WATCHDOG_IMAGE"
    );
    let env = check_function_stage(context, function);
    assert_eq!(env_value(&env, "mode"), Some(mode), "{context}: mode");
    assert_eq!(env_value(&env, "fprocess"), Some(fprocess), "{context}: fprocess");
    env
}

#[test]
fn tekton_task_builds_go_and_python_functions_with_kaniko() {
    let task = yaml("tekton-task.yaml");
    assert_eq!(text_at(&task, "apiVersion"), "tekton.dev/v1");
    assert_eq!(text_at(&task, "kind"), "Task");
    let params: BTreeSet<String> = seq_at(&task, "spec.params").iter().map(|p| text_at(p, "name")).collect();
    for param in ["LANGUAGE", "IMAGE", "WATCHDOG_IMAGE"] {
        assert!(params.contains(param), "tekton-task.yaml: param {param}");
    }
    let workspaces: Vec<String> = seq_at(&task, "spec.workspaces").iter().map(|w| text_at(w, "name")).collect();
    assert_eq!(workspaces, ["source"]);

    let steps = seq_at(&task, "spec.steps");
    let kaniko = steps
        .iter()
        .find(|s| text_at(s, "image").starts_with("gcr.io/kaniko-project/executor"))
        .expect("tekton-task.yaml: a kaniko step");
    let args: Vec<String> = seq_at(kaniko, "args").iter().map(scalar).collect();
    let arg = |flag: &str| -> String {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{flag}=")))
            .unwrap_or_else(|| panic!("kaniko needs --{flag}"))
            .to_string()
    };
    assert_eq!(arg("destination"), "$(params.IMAGE)");
    assert!(arg("context").ends_with("$(workspaces.source.path)"), "kaniko builds the workspace");
    let dockerfile = arg("dockerfile");

    // The script writes the Dockerfile that kaniko reads, in a directory both steps mount.
    let writer = steps.iter().find(|s| s.get("script").is_some()).expect("a step that writes the Dockerfile");
    let script = text_at(writer, "script");
    assert!(script.contains(&format!("cat > {dockerfile} <<")), "the script must write {dockerfile}");
    let directory = Path::new(&dockerfile).parent().unwrap().to_str().unwrap().to_string();
    for step in [writer, kaniko] {
        let mounts: Vec<String> = seq_at(step, "volumeMounts").iter().map(|m| text_at(m, "mountPath")).collect();
        assert!(mounts.contains(&directory), "step {}: mount {directory}", text_at(step, "name"));
    }

    let functions = knative_dir().join("functions");
    check_generated_dockerfile("Go Dockerfile", &heredoc(&script, "GO_DOCKERFILE"), "classic", "/home/app/handler");
    assert!(functions.join("go-classic/go.mod").exists() && functions.join("go-classic/main.go").exists());

    let python = heredoc(&script, "PYTHON_DOCKERFILE");
    let env = check_generated_dockerfile("Python Dockerfile", &python, "http", "python3 /home/app/handler.py");
    let instructions = parse_dockerfile(&python);
    let stages = stages(&instructions);
    let function = stages.last().unwrap();
    // The SDK comes from where the watchdog stage of ./Dockerfile puts it, and the source from the workspace.
    assert!(copies(function)
        .iter()
        .any(|(from, src, _)| from.as_deref() == Some("watchdog") && src == &["/opt/watchdog-sdk/python".to_string()]));
    assert!(all(function, "RUN").iter().any(|r| r.contains("pip install --no-cache-dir /opt/watchdog-sdk/python")));
    let script_path = &Config::from_pairs(env.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap().fprocess[1];
    assert!(copies_to(function, script_path), "the workspace must land where fprocess looks for handler.py");
    assert!(functions.join("python-http/handler.py").exists());

    // Go's toolchain in the builder must be at least the version the sample's go.mod asks for.
    let go_dockerfile = heredoc(&script, "GO_DOCKERFILE");
    let golang = go_dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("FROM golang:"))
        .and_then(|tag| tag.split(['-', ' ']).next())
        .expect("a golang builder stage");
    let go_mod = read("functions/go-classic/go.mod");
    let wanted = go_mod.lines().find_map(|l| l.strip_prefix("go ")).expect("go directive");
    assert!(version(golang) >= version(wanted), "golang:{golang} is older than go.mod's go {wanted}");
}

/// A dotted version as numbers, for comparison.
fn version(text: &str) -> Vec<u32> {
    text.trim().split('.').map(|n| n.parse().unwrap_or_else(|_| panic!("version {text}"))).collect()
}

// ---- The functions themselves ----

/// Runs a command, feeding `stdin`; returns its output.
fn run(command: &mut Command, stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn shell_function_answers_events_with_json() {
    let script = knative_dir().join("order.sh");
    let output = |env: &[(&str, &str)]| -> String {
        let mut command = Command::new(&script);
        command.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default()).envs(env.iter().copied());
        let out = run(&mut command, b"{\"order\": 42}");
        assert!(out.status.success(), "order.sh: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };

    // content_type=application/json in every manifest: each answer must be JSON.
    let reply = output(&[("CE_TYPE", ORDER_CREATED), ("CE_SOURCE", "/shop \"east\""), ("CE_ID", "A-1")]);
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{reply:?}: {e}"));
    assert_eq!(reply["type"], ORDER_CREATED);
    assert_eq!(reply["source"], "/shop \"east\"");
    assert_eq!(reply["id"], "A-1");
    assert_eq!(reply["length"], 13);

    let plain = output(&[]);
    serde_json::from_str::<serde_json::Value>(&plain).unwrap_or_else(|e| panic!("{plain:?}: {e}"));
    // Another type: no output, so the watchdog answers 202 and no reply event goes back to the broker.
    assert_eq!(output(&[("CE_TYPE", "com.example.order.shipped")]), "");
}

#[test]
fn python_handler_compiles() {
    let handler = knative_dir().join("functions/python-http/handler.py");
    let cache = tempfile::tempdir().unwrap();
    // The cache prefix keeps __pycache__ out of the source tree.
    let out = run(
        Command::new("python3").args(["-m", "py_compile"]).arg(&handler).env("PYTHONPYCACHEPREFIX", cache.path()),
        b"",
    );
    assert!(out.status.success(), "py_compile: {}", String::from_utf8_lossy(&out.stderr));
    let source = read("functions/python-http/handler.py");
    assert!(source.contains("watchdog_sdk.serve(handle)"), "handler.py must serve through the SDK");
}

#[test]
fn go_function_builds_when_go_is_installed() {
    let source = read("functions/go-classic/main.go");
    assert!(source.contains("os.Getenv(\"CE_TYPE\")") && source.contains("os.Stdin"));
    // Go is optional on a development machine; CI images with Go build and run the function.
    if Command::new("go").arg("version").output().is_err() {
        eprintln!("go is not installed: skipping the Go build");
        return;
    }
    let out_dir = tempfile::tempdir().unwrap();
    let binary = out_dir.path().join("handler");
    let out = run(
        Command::new("go")
            .args(["build", "-o"])
            .arg(&binary)
            .arg(".")
            .current_dir(knative_dir().join("functions/go-classic"))
            .env("CGO_ENABLED", "0"),
        b"",
    );
    assert!(out.status.success(), "go build: {}", String::from_utf8_lossy(&out.stderr));
    let out = run(Command::new(&binary).env("CE_TYPE", ORDER_CREATED).env("CE_ID", "1"), b"{}");
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON reply");
    assert_eq!(reply["type"], ORDER_CREATED);
}
