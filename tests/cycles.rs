//! No import cycles among the top-level modules of `src/` (`config`, `strategy`, `cache`, …; a
//! folder module with its files is one node, so `strategy/mod.rs` and its strategies are one).
//! Every `crate::…` path, and every `super::…` path that leaves its folder, is an edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the top-level modules it names.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    let top = |p: &Path| -> String {
        let rel = p.strip_prefix(src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        first.trim_end_matches(".rs").to_string()
    };
    let mut nodes: BTreeSet<String> = files.iter().map(|f| top(f)).collect();
    nodes.retain(|n| n != "lib" && n != "main");
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let from = top(f);
        let depth = f.strip_prefix(src).unwrap().components().count() - 1; // folders below src
        let text = std::fs::read_to_string(f).unwrap();
        let code: String = text
            .lines()
            .map(|l| l.split("//").next().unwrap_or("")) // comments (and, rarely, a URL's tail)
            .collect::<Vec<_>>()
            .join("\n");
        let mut names = Vec::new();
        for (i, _) in code.match_indices("crate::") {
            names.extend(path_heads(&code[i + "crate::".len()..]));
        }
        // `super::` from a file `depth` folders down: one level up per `super` (a mod.rs is its
        // folder's module); reaching the crate root names a top-level module
        for (i, _) in code.match_indices("super::") {
            if i >= 7 && &code[i - 7..i] == "super::" {
                continue; // counted at the first `super::` of the chain
            }
            let mut rest = &code[i..];
            let mut ups = 0;
            while let Some(r) = rest.strip_prefix("super::") {
                ups += 1;
                rest = r;
            }
            let is_mod = f.file_name().unwrap() == "mod.rs";
            let level = depth as i64 + !is_mod as i64 - ups; // 0: crate root
            if level == 0 {
                names.extend(path_heads(rest));
            }
        }
        for n in names {
            if n != from && nodes.contains(&n) {
                g.entry(from.clone()).or_default().insert(n);
            }
        }
        g.entry(from).or_default();
    }
    g.retain(|k, _| nodes.contains(k));
    g
}

/// The first segment of a path, or of each path in a `{a, b::c}` group.
fn path_heads(s: &str) -> Vec<String> {
    let ident = |t: &str| -> String {
        t.trim()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    if let Some(group) = s.strip_prefix('{') {
        let end = group.find('}').unwrap_or(group.len());
        group[..end]
            .split(',')
            .map(ident)
            .filter(|x| !x.is_empty())
            .collect()
    } else {
        vec![ident(s)]
    }
}

/// The strongly connected components with more than one module (Tarjan).
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

#[test]
fn the_checker_finds_a_cycle_through_crate_and_super_paths() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path();
    std::fs::create_dir_all(src.join("b")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod a; pub mod b; pub mod c;").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::{b::x, c};").unwrap();
    std::fs::write(src.join("b/mod.rs"), "pub mod x;").unwrap();
    std::fs::write(
        src.join("b/x.rs"),
        "use super::super::a::f; // crate::c in a comment",
    )
    .unwrap();
    std::fs::write(src.join("c.rs"), "use super::super_thing;").unwrap();
    let g = graph(src);
    assert_eq!(g["a"], ["b", "c"].iter().map(|s| s.to_string()).collect());
    assert_eq!(g["b"], ["a"].iter().map(|s| s.to_string()).collect());
    assert!(g["c"].is_empty());
    let want: BTreeSet<Vec<String>> = [vec!["a".to_string(), "b".to_string()]].into();
    assert_eq!(cycles(&g), want);
}

#[test]
fn src_has_no_import_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = cycles(&graph(&src));
    assert!(
        found.is_empty(),
        "import cycles among src/'s modules: {found:?}"
    );
}
