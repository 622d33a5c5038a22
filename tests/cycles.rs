//! No import cycles in `src/`, at two grains:
//! - among the top-level modules (`config`, `strategy`, `cache`, …; a folder module with its
//!   files is one node), so the layers stay one-way;
//! - among the files, so inside a folder the registry (`mod.rs`) may use its members and the
//!   members a shared file (`api.rs`), but a member never reaches back into `mod.rs`.
//!
//! An edge is a path in non-test code that names an item of another file: `crate::a::b::x`,
//! `super::x`, `self::x`, a child module's `child::x` and each line `child [..]` of a
//! `registry!` block. A path resolves to the deepest module it names (an item re-exported by a
//! `mod.rs` is an edge to that `mod.rs`). Test code (`#[cfg(test)]` items) and comments are
//! left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A source file as a module: its path segments below the crate root and its code.
struct File {
    module: Vec<String>,
    name: String,
    code: String,
}

fn files(src: &Path) -> Vec<File> {
    let mut found: Vec<PathBuf> = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                found.push(p);
            }
        }
    }
    found.sort();
    found
        .into_iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(src).unwrap().to_path_buf();
            let mut module: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().to_string())
                .collect();
            let last = module.pop().unwrap();
            match last.as_str() {
                "lib.rs" | "main.rs" if module.is_empty() => return None,
                "mod.rs" => {}
                f => module.push(f.trim_end_matches(".rs").to_string()),
            }
            let text = std::fs::read_to_string(&p).unwrap();
            Some(File {
                module,
                name: rel.to_string_lossy().to_string(),
                code: inline_modules(&without_tests(&without_comments(&text))),
            })
        })
        .collect()
}

fn without_comments(text: &str) -> String {
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The index just past the `}` matching the `{` at `open`.
fn block_end(s: &str, open: usize) -> usize {
    let mut depth = 0;
    for (i, c) in s[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return open + i + 1;
                }
            }
            _ => {}
        }
    }
    s.len()
}

/// The code without `#[cfg(test)]` items (a `mod tests { … }`, a `use …;`).
fn without_tests(code: &str) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(i) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        let semi = after.find(';').unwrap_or(after.len());
        let brace = after.find('{').unwrap_or(after.len());
        let end = if semi < brace {
            semi + 1
        } else {
            block_end(after, brace)
        };
        rest = &after[end.min(after.len())..];
    }
    out.push_str(rest);
    out
}

/// Inside an inline `mod name { … }`, the first `super::` of a path means the file's own
/// module: written `self::` so that paths resolve from the file.
fn inline_modules(code: &str) -> String {
    let mut out = code.to_string();
    let mut from = 0;
    while let Some(i) = out[from..].find("mod ").map(|i| i + from) {
        let boundary = i == 0 || !is_ident(out[..i].chars().last().unwrap());
        let line_end = out[i..].find('\n').map_or(out.len(), |e| i + e);
        let brace = out[i..line_end].find('{').map(|b| i + b);
        match (boundary, brace) {
            (true, Some(b)) if !out[i..b].contains(';') => {
                let end = block_end(&out, b);
                let inner = out[b..end].replace("super::", "\u{0}");
                let inner = inner.replace("\u{0}\u{0}", "super::\u{0}");
                let inner = inner.replace('\u{0}', "self::");
                out.replace_range(b..end, &inner);
                from = b + 1;
            }
            _ => from = i + 4,
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn ident(s: &str) -> &str {
    let n = s.find(|c: char| !is_ident(c)).unwrap_or(s.len());
    &s[..n]
}

/// The full paths of the path or use-tree that starts at `s` (`a::b::{c, d::{e, f}}`).
fn paths(s: &str) -> Vec<Vec<String>> {
    fn tree(s: &str, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
        let mut p = prefix;
        let mut rest = s.trim_start();
        loop {
            if let Some(group) = rest.strip_prefix('{') {
                let end = block_end(rest, 0) - 1;
                let mut depth = 0;
                let mut start = 0;
                let inner = &group[..end - 1];
                for (i, c) in inner.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            tree(&inner[start..i], p.clone(), out);
                            start = i + 1;
                        }
                        _ => {}
                    }
                }
                tree(&inner[start..], p.clone(), out);
                return;
            }
            let id = ident(rest);
            if id.is_empty() {
                break;
            }
            if id != "self" || p.is_empty() {
                p.push(id.to_string());
            }
            rest = &rest[id.len()..];
            match rest.strip_prefix("::") {
                Some(r) => rest = r.trim_start(),
                None => break,
            }
        }
        if !p.is_empty() {
            out.push(p);
        }
    }
    let mut out = Vec::new();
    tree(s, Vec::new(), &mut out);
    out
}

/// File → the files it names.
fn file_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let fs = files(src);
    let by_module: BTreeMap<Vec<String>, String> = fs
        .iter()
        .map(|f| (f.module.clone(), f.name.clone()))
        .collect();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &fs {
        let children: BTreeSet<&str> = by_module
            .keys()
            .filter(|m| m.len() == f.module.len() + 1 && m.starts_with(&f.module))
            .map(|m| m.last().unwrap().as_str())
            .collect();
        let code = &f.code;
        let mut found: Vec<Vec<String>> = Vec::new();
        for (i, _) in code.match_indices(|c: char| is_ident(c)) {
            let before = code[..i].chars().last();
            if before.is_some_and(|c| is_ident(c) || c == ':' || c == '$') {
                continue; // not the start of a path
            }
            let id = ident(&code[i..]);
            let starts = matches!(id, "crate" | "super" | "self") || children.contains(id);
            if starts && code[i + id.len()..].starts_with("::") {
                found.extend(paths(&code[i..]));
            }
        }
        if let Some(r) = code.find("registry! {") {
            let end = block_end(code, r + "registry! ".len());
            for line in code[r..end].lines().skip(1) {
                let id = ident(line.trim_start());
                if children.contains(id) {
                    found.push(vec![id.to_string()]);
                }
            }
        }
        let edges = g.entry(f.name.clone()).or_default();
        for p in found {
            let (mut at, rest): (Vec<String>, &[String]) = match p[0].as_str() {
                "crate" => (Vec::new(), &p[1..]),
                "self" => (f.module.clone(), &p[1..]),
                "super" => {
                    let ups = p.iter().take_while(|s| *s == "super").count();
                    let keep = f.module.len().saturating_sub(ups);
                    (f.module[..keep].to_vec(), &p[ups..])
                }
                _ => (f.module.clone(), &p[..]),
            };
            for s in rest {
                at.push(s.clone());
                if !by_module.contains_key(&at) {
                    at.pop();
                    break;
                }
            }
            if let Some(target) = by_module.get(&at) {
                if *target != f.name {
                    edges.insert(target.clone());
                }
            }
        }
    }
    g
}

/// Top-level module → the top-level modules it names (from the file graph).
fn module_graph(files: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<String, BTreeSet<String>> {
    let top = |f: &str| -> String {
        let first = f.split('/').next().unwrap();
        first.trim_end_matches(".rs").to_string()
    };
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (f, to) in files {
        let from = top(f);
        let e = g.entry(from.clone()).or_default();
        e.extend(to.iter().map(|t| top(t)).filter(|t| *t != from));
    }
    g
}

/// The strongly connected components with more than one node (Tarjan).
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<Vec<String>> {
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: BTreeSet<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.insert(comp);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: BTreeSet::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_checker_resolves_paths_to_files_and_finds_cycles() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path();
    std::fs::create_dir_all(src.join("b")).unwrap();
    let w = |p: &str, s: &str| std::fs::write(src.join(p), s).unwrap();
    w("lib.rs", "pub mod a; pub mod b; pub mod c;");
    w("a.rs", "use crate::{b::x::{self, Y}, c};");
    // mod.rs uses its member through the registry; the member names a sibling and, in a test
    // and a comment only, mod.rs
    w(
        "b/mod.rs",
        "pub mod api;\nregistry! {\n    x [\"x\"],\n}\npub use api::Z;",
    );
    w(
        "b/x.rs",
        "use super::api::Z; // super::Q\n#[cfg(test)]\nmod tests { use super::super::Q; }",
    );
    w("b/api.rs", "pub struct Z;\nmod inner { use super::Z; }");
    w("c.rs", "use super::super_thing; fn f() { crate::a::g(); }");
    let g = file_graph(src);
    assert_eq!(g["a.rs"], set(&["b/x.rs", "c.rs"]));
    assert_eq!(g["b/mod.rs"], set(&["b/api.rs", "b/x.rs"]));
    assert_eq!(g["b/x.rs"], set(&["b/api.rs"]));
    assert!(g["b/api.rs"].is_empty(), "{:?}", g["b/api.rs"]);
    assert_eq!(g["c.rs"], set(&["a.rs"]));
    let want: BTreeSet<Vec<String>> = [vec!["a.rs".to_string(), "c.rs".to_string()]].into();
    assert_eq!(cycles(&g), want);
    let m = module_graph(&g);
    assert_eq!(m["a"], set(&["b", "c"]));
    // a member that reaches back into mod.rs closes a loop through the registry
    w("b/x.rs", "use super::Z;");
    w("c.rs", "");
    let g = file_graph(src);
    let want: BTreeSet<Vec<String>> = [vec!["b/mod.rs".to_string(), "b/x.rs".to_string()]].into();
    assert_eq!(cycles(&g), want);
}

#[test]
fn stages_share_only_the_data_layer() {
    // a stage reads what another wrote through the tables, not its code; `run` is the sweep
    // driver that calls the stages in turn
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = file_graph(&src);
    // the stage a file belongs to: `stages/x.rs` or a file of the folder `stages/x/`
    let stage = |f: &str| -> Option<String> {
        let rest = f.strip_prefix("stages/")?;
        (rest != "mod.rs").then(|| {
            rest.split('/')
                .next()
                .unwrap()
                .trim_end_matches(".rs")
                .into()
        })
    };
    let mut bad = Vec::new();
    for (from, to) in &g {
        let Some(s) = stage(from).filter(|s| s != "run") else {
            continue;
        };
        for t in to {
            if stage(t).is_some_and(|o| o != s) {
                bad.push(format!("{from} → {t}"));
            }
        }
    }
    assert!(bad.is_empty(), "stages naming other stages: {bad:?}");
    assert!(g["stages/run.rs"].contains("stages/select.rs"));
}

#[test]
fn src_has_no_import_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = file_graph(&src);
    assert!(g.len() > 50, "{} files", g.len());
    // edges the checker must see (it would pass vacuously if it saw none)
    for (from, to) in [
        ("strategy/mod.rs", "strategy/random.rs"),
        ("strategy/bald.rs", "strategy/mc.rs"),
        ("strategy/ccma.rs", "conformal.rs"),
        ("strategy/ccma.rs", "strategy/api.rs"),
        ("train/mod.rs", "train/dho.rs"),
        ("config.rs", "strategy/mod.rs"),
        ("stages/eval.rs", "strategy/ccma.rs"),
    ] {
        assert!(
            g[from].contains(to),
            "{from} → {to} not found: {:?}",
            g[from]
        );
    }
    let files = cycles(&g);
    let modules = cycles(&module_graph(&g));
    assert!(
        files.is_empty() && modules.is_empty(),
        "import cycles among src/'s top-level modules: {modules:?}; among its files: {files:?}"
    );
}
