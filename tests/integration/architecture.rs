//! The shape of the code, checked (ARCHITECTURE.md): modules import only from layers
//! below their own, sibling submodules import each other in one direction only, and no
//! source file grows past 800 lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first. A module may use modules of lower layers only (its own
/// layer's too, if listed in `SAME_LAYER_OK`): the tarball, the store and the SR know
/// nothing of each other, only `transfer` sees all three, and only the front ends
/// (`cli`, `xapi`) see `transfer`.
const LAYERS: &[&[&str]] = &[
    &["error", "testhooks", "fsutil"],
    &["log", "stream", "retry"],
    &["progress", "vhd", "signals"],
    &["bundle", "store", "sr", "xenapi"],
    &["transfer"],
    &["xapi", "cli"],
];

/// Same-layer uses that are fine (a lower module of the same layer).
const SAME_LAYER_OK: &[(&str, &str)] = &[];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file: `src/xapi/calls/glance.rs` → `["xapi", "calls", "glance"]`.
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts
        .last()
        .is_some_and(|l| l == "mod" || l == "lib" || l == "main")
    {
        parts.pop();
    }
    parts
}

/// The code of a file without comments, strings and its `#[cfg(test)]` tail: what it
/// uses, not what it mentions.
fn code(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .filter(|l| !l.trim_start().starts_with('"'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every module path a file refers to with `crate::a::b` or `super::b`, resolved to an
/// absolute path (as deep as the words go).
fn uses(file: &Path) -> BTreeSet<Vec<String>> {
    let me = module_of(file);
    let code = code(file);
    let mut out = BTreeSet::new();
    let word = |s: &str| -> Vec<String> {
        s.split("::")
            .take_while(|w| {
                !w.is_empty()
                    && w.chars()
                        .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
            })
            .map(str::to_string)
            .collect()
    };
    for (i, _) in code.match_indices("crate::") {
        let path = word(&code[i + "crate::".len()..]);
        if !path.is_empty() {
            out.insert(path);
        }
    }
    for (i, _) in code.match_indices("super::") {
        // `super::` from a file's module is its parent module.
        if i > 0 && code.as_bytes()[i - 1] == b':' {
            continue; // `super::super::` is counted once, from its first `super`
        }
        let mut base = me.clone();
        base.pop();
        let mut rest = &code[i + "super::".len()..];
        while let Some(r) = rest.strip_prefix("super::") {
            base.pop();
            rest = r;
        }
        let mut path = base;
        path.extend(word(rest));
        out.insert(path);
    }
    out
}

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

#[test]
fn modules_use_only_lower_layers() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut wrong = Vec::new();
    for f in &files {
        let me = module_of(f);
        let Some(top) = me.first() else { continue }; // lib.rs, main.rs
        let Some(my_layer) = layer(top) else {
            wrong.push(format!("{}: module {top} is in no layer", f.display()));
            continue;
        };
        for used in uses(f) {
            let Some(other) = used.first() else { continue };
            if other == top {
                continue;
            }
            match layer(other) {
                None => {} // a std or crate item re-exported at the root, if any
                Some(l) if l < my_layer => {}
                Some(l)
                    if l == my_layer && SAME_LAYER_OK.contains(&(top.as_str(), other.as_str())) => {
                }
                Some(_) => wrong.push(format!(
                    "{}: {top} uses {} (layer {} may not use {other})",
                    f.display(),
                    used.join("::"),
                    my_layer
                )),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn sibling_modules_do_not_import_each_other_in_circles() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    // Edges between sibling modules (same parent), e.g. xapi::failure → xapi::calls.
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for f in &files {
        let me = module_of(f);
        for used in uses(f) {
            // The sibling of `me` (or of an ancestor of `me`) that `used` lies in.
            let common = me.iter().zip(&used).take_while(|(a, b)| a == b).count();
            if common >= me.len() || common >= used.len() {
                continue; // a parent or child of mine: the module tree itself
            }
            let from = me[..=common].to_vec();
            let to = used[..=common].to_vec();
            edges.entry(from).or_default().insert(to);
        }
    }
    let mut cycles = Vec::new();
    for (a, targets) in &edges {
        for b in targets {
            if edges.get(b).is_some_and(|t| t.contains(a)) && a < b {
                cycles.push(format!("{} <-> {}", a.join("::"), b.join("::")));
            }
        }
    }
    // Longer circles: a depth-first search from every node.
    fn reach(
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        from: &Vec<String>,
        target: &Vec<String>,
        seen: &mut BTreeSet<Vec<String>>,
    ) -> bool {
        for n in edges.get(from).into_iter().flatten() {
            if n == target {
                return true;
            }
            if seen.insert(n.clone()) && reach(edges, n, target, seen) {
                return true;
            }
        }
        false
    }
    for a in edges.keys() {
        if reach(&edges, a, a, &mut BTreeSet::new()) {
            cycles.push(format!("{} is on a circle", a.join("::")));
        }
    }
    cycles.dedup();
    assert!(cycles.is_empty(), "import circles:\n{}", cycles.join("\n"));
}

#[test]
fn no_source_file_over_800_lines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "tests"] {
        rust_files(&root.join(dir), &mut files);
    }
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).unwrap().lines().count();
            (n > 800).then(|| format!("{}: {n} lines", f.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "files over 800 lines:\n{}",
        long.join("\n")
    );
}
