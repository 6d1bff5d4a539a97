//! The layout rule of issue 17: no two modules import each other, so each
//! tree reads one way (in vfio-zp, the way an event travels). A module is a
//! file; what it imports is every `crate::` or `super::` path outside its
//! test module, resolved to the longest module path that exists.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Module = Vec<String>;

/// Every module of the crate rooted at `src` and the modules it names.
pub fn imports(src: &Path) -> std::io::Result<BTreeMap<Module, BTreeSet<Module>>> {
    let mut files = BTreeMap::new();
    collect(src, src, &mut files)?;
    let known: BTreeSet<Module> = files.keys().cloned().collect();
    Ok(files
        .iter()
        .map(|(m, text)| {
            let deps = paths(&code_of(text), m)
                .into_iter()
                .filter_map(|p| longest_module(&p, &known))
                .filter(|d| d != m)
                .collect();
            (m.clone(), deps)
        })
        .collect())
}

/// Pairs of modules that import each other (neither inside the other).
pub fn circles(imports: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (a, deps) in imports {
        for b in deps {
            let nested = a.starts_with(b) || b.starts_with(a);
            if a < b && !nested && imports.get(b).is_some_and(|d| d.contains(a)) {
                out.push((a.join("::"), b.join("::")));
            }
        }
    }
    out
}

fn collect(root: &Path, dir: &Path, out: &mut BTreeMap<Module, String>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let path = e?.path();
        if path.is_dir() {
            collect(root, &path, out)?;
        } else if path.extension().is_some_and(|x| x == "rs") {
            let rel = path.strip_prefix(root).unwrap_or(&path).with_extension("");
            let mut m: Module = rel
                .iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect();
            if m.last()
                .is_some_and(|l| ["mod", "lib", "main"].contains(&l.as_str()))
            {
                m.pop();
            }
            out.insert(m, std::fs::read_to_string(&path)?);
        }
    }
    Ok(())
}

/// The text without comments and without the test module at its end.
fn code_of(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path the code names from `crate::` or `super::`, use-groups
/// (`a::{b, c::{d}}`) expanded, as absolute module paths.
fn paths(code: &str, module: &[String]) -> Vec<Module> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let prefix_ok =
            i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_' || b[i - 1] == b':');
        let base: Option<(Module, usize)> = if !prefix_ok {
            None
        } else if code[i..].starts_with("crate::") {
            Some((Vec::new(), 7))
        } else if code[i..].starts_with("super::") {
            Some((module[..module.len().saturating_sub(1)].to_vec(), 7))
        } else {
            None
        };
        match base {
            Some((base, n)) => i = tree(code, i + n, base, &mut out),
            None => i += 1,
        }
    }
    out
}

/// Reads one use-tree at `i` below `base`; returns where it ends.
fn tree(code: &str, mut i: usize, mut base: Module, out: &mut Vec<Module>) -> usize {
    let b = code.as_bytes();
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < b.len() && b[i] == b'{' {
            i += 1;
            loop {
                i = tree(code, i, base.clone(), out);
                while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b',') {
                    i += 1;
                }
                if i >= b.len() || b[i] == b'}' {
                    return i + 1;
                }
            }
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        match &code[start..i] {
            "" => break,
            "self" => {}
            seg => base.push(seg.to_string()),
        }
        if code[i..].starts_with("::") {
            i += 2;
        } else {
            break;
        }
    }
    out.push(base);
    i
}

fn longest_module(path: &[String], known: &BTreeSet<Module>) -> Option<Module> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|m| known.contains(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Module {
        s.split("::").map(String::from).collect()
    }

    #[test]
    fn reads_groups_self_and_super() {
        let code = "use crate::{a::{self, b::C}, d};\nfn f() { super::e::g(); x::crate::no(); }";
        let got = paths(code, &m("p::q"));
        assert_eq!(got, vec![m("a"), m("a::b::C"), m("d"), m("p::e::g")]);
    }

    #[test]
    fn finds_a_circle_and_ignores_comments_tests_and_nesting() {
        let dir = tempfile_dir();
        let w = |p: &str, t: &str| {
            let p = dir.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, t).unwrap();
        };
        w("lib.rs", "pub mod a; pub mod b; pub mod c;");
        w("a.rs", "use crate::b::X;");
        w("b.rs", "pub fn f() { crate::a::g() }\n// crate::c::h\n");
        w("c/mod.rs", "pub mod d; use crate::c::d::Y;");
        w(
            "c/d.rs",
            "use super::Z;\n#[cfg(test)]\nmod tests { use crate::a::G; }",
        );
        let found = circles(&imports(&dir).unwrap());
        assert_eq!(found, vec![("a".to_string(), "b".to_string())]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("xtask-layout-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// The rule itself, on this workspace's two source trees.
    #[test]
    fn no_two_modules_import_each_other() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for src in ["vfio-zp/src", "vfio-zp-workload/src", "xtask/src"] {
            let found = circles(&imports(&root.join(src)).unwrap());
            assert!(
                found.is_empty(),
                "{src}: modules that import each other: {found:?}"
            );
        }
    }
}
