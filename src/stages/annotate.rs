//! `vlal annotate`: a local web page where a person labels one round's queries. The queried
//! images come in query order, each with the teacher's and the student's top-3 classes as
//! one-click suggestions, every class as a button with a keyboard shortcut, "skip / not sure",
//! progress and undo. Each answer is written at once (the round's answers file, replaced
//! atomically), so closing the page or killing the server loses nothing and a restart resumes;
//! the page polls, so two tabs on one round see each other's answers, and the one server thread
//! applies their answers one at a time. A complete round names the command that continues.
//!
//! The server (tiny_http, one thread) binds 127.0.0.1 unless `--allow-remote` says otherwise.
//! Images are served by query position only (`/image/<k>`), from the paths the manifest names:
//! no path from a request ever reaches the file system.

use crate::cache::Cache;
use crate::config::RunSpec;
use crate::rounds::{person_queries, read_answers, write_answers, Query};
use anyhow::{anyhow, bail, Result};
use serde_json::json;
use std::collections::HashMap;
use std::io::Read;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use tiny_http::{Header, Method, Request, Response, Server};

const PAGE: &str = include_str!("annotate.html");

/// Shortcut keys of the classes, in class order (classes past the 36th have a button only).
const KEYS: &str = "1234567890qwertyuiopasdfghjklzxcvbnm";

#[derive(clap::Args)]
pub struct AnnotateArgs {
    /// Address to bind; a non-loopback address needs --allow-remote.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free port; the URL is printed).
    #[arg(long, default_value_t = 8765)]
    pub port: u16,
    /// Serve on a non-loopback address (anyone who reaches it can see the images and label).
    #[arg(long)]
    pub allow_remote: bool,
}

/// The round being labeled, as the server holds it.
struct Session {
    spec_label: String,
    round: usize,
    classes: Vec<String>,
    queries: Vec<Query>,
    /// sample id → position in `queries`.
    pos: HashMap<String, usize>,
    /// Per query: None = not answered, Some(None) = skipped, Some(Some(class)).
    answers: Vec<Option<Option<String>>>,
    path: PathBuf,
    next: String,
}

impl Session {
    fn answered(&self) -> usize {
        self.answers.iter().filter(|a| a.is_some()).count()
    }

    fn save(&self) -> Result<()> {
        let rows: Vec<(String, Option<String>)> = self
            .queries
            .iter()
            .zip(&self.answers)
            .filter_map(|(q, a)| a.clone().map(|a| (q.sample_id.clone(), a)))
            .collect();
        write_answers(&self.path, &rows)
    }

    fn state(&self) -> serde_json::Value {
        let named = |v: &[(usize, f32)]| -> Vec<serde_json::Value> {
            v.iter()
                .map(|&(c, p)| json!({"class": self.classes[c], "p": p}))
                .collect()
        };
        let items: Vec<serde_json::Value> = self
            .queries
            .iter()
            .enumerate()
            .map(|(k, q)| {
                json!({
                    "sample_id": q.sample_id,
                    "rank": q.rank,
                    "score": q.score,
                    "image": q.path.as_ref().map(|_| format!("/image/{k}")),
                    "student": named(&q.student),
                    "teacher": q.teacher.as_deref().map(named),
                    "answer": match &self.answers[k] {
                        None => json!(null),
                        Some(None) => json!({"skipped": true}),
                        Some(Some(c)) => json!({"label": c}),
                    },
                })
            })
            .collect();
        let keys: Vec<String> = KEYS.chars().map(String::from).collect();
        json!({
            "run": self.spec_label,
            "round": self.round,
            "classes": self.classes,
            "keys": keys,
            "items": items,
            "answered": self.answered(),
            "total": self.queries.len(),
            "complete": self.answered() == self.queries.len(),
            "answers_file": self.path.display().to_string(),
            "next": self.next,
        })
    }

    /// Apply an answer (`label`, or a skip when None) or, with `undo`, take one back.
    fn answer(&mut self, body: &serde_json::Value, undo: bool) -> Result<()> {
        let id = body
            .get("sample_id")
            .and_then(|v| v.as_str())
            .ok_or_else(|| anyhow!("no sample_id"))?;
        let &k = self
            .pos
            .get(id)
            .ok_or_else(|| anyhow!("sample '{id}' was not queried in round {}", self.round))?;
        self.answers[k] = if undo {
            None
        } else if body.get("skip").and_then(|v| v.as_bool()) == Some(true) {
            Some(None)
        } else {
            let c = body
                .get("label")
                .and_then(|v| v.as_str())
                .ok_or_else(|| anyhow!("no label"))?;
            if !self.classes.iter().any(|x| x == c) {
                bail!("unknown class '{c}'");
            }
            Some(Some(c.to_string()))
        };
        self.save()
    }
}

/// The addresses `host` names.
fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| anyhow!("--host {host}: cannot resolve ({e})"))?
        .collect();
    if addrs.is_empty() {
        bail!("--host {host}: no address");
    }
    Ok(addrs)
}

fn content_type(path: &std::path::Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .as_deref()
    {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("bmp") => "image/bmp",
        _ => "application/octet-stream",
    }
}

fn header(k: &str, v: &str) -> Header {
    Header::from_bytes(k.as_bytes(), v.as_bytes()).expect("a valid header")
}

fn json_response(status: u16, v: &serde_json::Value) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_data(v.to_string().into_bytes())
        .with_status_code(status)
        .with_header(header("Content-Type", "application/json"))
        .with_header(header("Cache-Control", "no-store"))
}

fn handle(s: &mut Session, mut req: Request) -> std::io::Result<()> {
    let url = req.url().split('?').next().unwrap_or("").to_string();
    let method = req.method().clone();
    match (method, url.as_str()) {
        (Method::Get, "/") => req.respond(
            Response::from_data(PAGE.as_bytes().to_vec())
                .with_header(header("Content-Type", "text/html; charset=utf-8"))
                .with_header(header("Cache-Control", "no-store")),
        ),
        (Method::Get, "/api/state") => req.respond(json_response(200, &s.state())),
        (Method::Post, "/api/answer" | "/api/undo") => {
            let mut body = String::new();
            let parsed = req
                .as_reader()
                .take(1 << 16)
                .read_to_string(&mut body)
                .map_err(|e| anyhow!("{e}"))
                .and_then(|_| serde_json::from_str(&body).map_err(|e| anyhow!("bad JSON: {e}")))
                .and_then(|v: serde_json::Value| s.answer(&v, url == "/api/undo"));
            match parsed {
                Ok(()) => req.respond(json_response(200, &s.state())),
                Err(e) => {
                    crate::progress::log(format!("annotate: refused an answer: {e:#}"));
                    req.respond(json_response(400, &json!({"error": format!("{e:#}")})))
                }
            }
        }
        (Method::Get, u) if u.starts_with("/image/") => {
            let path = u["/image/".len()..]
                .parse::<usize>()
                .ok()
                .and_then(|k| s.queries.get(k))
                .and_then(|q| q.path.clone());
            match path.map(|p| (std::fs::read(&p), p)) {
                Some((Ok(bytes), p)) => req.respond(
                    Response::from_data(bytes)
                        .with_header(header("Content-Type", content_type(&p))),
                ),
                Some((Err(e), p)) => {
                    crate::progress::log(format!("annotate: {}: cannot read ({e})", p.display()));
                    req.respond(
                        Response::from_string("cannot read the image").with_status_code(500),
                    )
                }
                None => req.respond(Response::from_string("not found").with_status_code(404)),
            }
        }
        _ => req.respond(Response::from_string("not found").with_status_code(404)),
    }
}

/// The first round whose queries wait for answers (no next round's labels yet).
pub fn waiting_round(spec: &RunSpec) -> Result<usize> {
    (0..spec.pipeline.rounds)
        .find(|&r| spec.queries_path(r).exists() && !spec.labels_path(r + 1).exists())
        .ok_or_else(|| {
            anyhow!(
                "{}: no round waits for answers (every round with queries has its next labels; run `vlal run` or `vlal select` first)",
                spec.run_dir().display()
            )
        })
}

/// Serve round `round` of the run until the process is stopped.
pub fn run(spec: &RunSpec, cache: &Cache, round: usize, a: &AnnotateArgs) -> Result<()> {
    let addrs = resolve(&a.host, a.port)?;
    if !a.allow_remote {
        if let Some(bad) = addrs.iter().find(|s| !s.ip().is_loopback()) {
            bail!(
                "--host {}: {} is not a loopback address; refusing to serve the images and the answers to other machines (pass --allow-remote to do so on purpose)",
                a.host,
                bad.ip()
            );
        }
    }
    let queries = person_queries(spec, cache, round, 3)?;
    if queries.is_empty() {
        bail!(
            "{}: round {round} has no query for a person (all pseudo-labelled)",
            spec.queries_path(round).display()
        );
    }
    let pos: HashMap<String, usize> = queries
        .iter()
        .enumerate()
        .map(|(k, q)| (q.sample_id.clone(), k))
        .collect();
    let path = spec.answers_path(round);
    let mut answers = vec![None; queries.len()];
    if path.exists() {
        for (i, (id, label)) in read_answers(&path)?.into_iter().enumerate() {
            let Some(&k) = pos.get(&id) else {
                bail!(
                    "{}: row {}: sample '{id}' was not queried in round {round}",
                    path.display(),
                    i + 1
                );
            };
            if let Some(c) = &label {
                if !cache.classes.contains(c) {
                    bail!("{}: row {}: unknown class '{c}'", path.display(), i + 1);
                }
            }
            answers[k] = Some(label);
        }
    }
    let next = if spec.pipeline.oracle == "person" {
        format!("vlal run {}", spec.pipeline.file.display())
    } else {
        format!(
            "vlal label {} --round {round} --from-file {}",
            spec.run_args(),
            path.display()
        )
    };
    let mut s = Session {
        spec_label: spec.label(),
        round,
        classes: cache.classes.clone(),
        queries,
        pos,
        answers,
        path,
        next,
    };
    let server = Server::http(&addrs[..])
        .map_err(|e| anyhow!("--host {} --port {}: cannot listen ({e})", a.host, a.port))?;
    let at = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| anyhow!("not an IP listener"))?;
    crate::progress::say(
        None,
        format!(
            "annotating round {round} of {} ({} of {} answered): http://{at}/ (answers are saved as you go in {}; Ctrl-C stops)",
            s.spec_label,
            s.answered(),
            s.queries.len(),
            s.path.display()
        ),
    );
    for req in server.incoming_requests() {
        let was = s.answered() == s.queries.len();
        if let Err(e) = handle(&mut s, req) {
            crate::progress::log(format!("annotate: a response failed ({e})"));
        }
        if !was && s.answered() == s.queries.len() {
            crate::progress::say(
                None,
                format!("round {round} is complete; continue with: {}", s.next),
            );
        }
    }
    Ok(())
}
