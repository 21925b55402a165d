//! The domain layer stays pure: no IO, async runtime, database or HTTP imports.

use crate::helpers::manifest_dir;

#[test]
fn the_domain_layer_imports_no_diesel_actix_tokio_or_stripe() {
    let dir = manifest_dir().join("src/domain");
    let forbidden = [
        "diesel", "actix", "tokio", "stripe", "reqwest", "std::fs", "std::net",
    ];
    let mut checked = 0;
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for word in forbidden {
                assert!(
                    !text.contains(word),
                    "{} mentions `{word}`: the domain layer must stay pure",
                    path.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 5, "expected the domain files, found {checked}");
}

/// The first path segments named after `prefix` in `code`: `super::a::b` gives `a`,
/// `super::{a, b::c}` gives `a` and `b`.
fn segments_after(code: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        rest = &rest[i + prefix.len()..];
        if let Some(list) = rest.strip_prefix('{') {
            let inner = &list[..list.find('}').unwrap_or(list.len())];
            for item in inner.split(',') {
                let first = item.trim().split("::").next().unwrap_or("").trim();
                out.push(first.split_whitespace().next().unwrap_or("").to_owned());
            }
        } else {
            let ident: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.push(ident);
        }
    }
    out
}

/// Which service modules each service module uses (`super::x` or `crate::services::x`).
fn service_graph() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let dir = manifest_dir().join("src/services");
    let modules: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension()? == "rs").then(|| p.file_stem()?.to_str().map(str::to_owned))?
        })
        .filter(|m| m != "mod")
        .collect();
    let mut graph = std::collections::BTreeMap::new();
    for m in &modules {
        let text = std::fs::read_to_string(dir.join(format!("{m}.rs"))).unwrap();
        // Without comments, so docs naming another module do not count as a use.
        let code: String = text
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join(" ");
        let mut named = segments_after(&code, "super::");
        named.extend(segments_after(&code, "crate::services::"));
        let uses = named
            .into_iter()
            .filter(|n| n != m && modules.contains(n))
            .collect();
        graph.insert(m.clone(), uses);
    }
    graph
}

/// Services depend one way: the lifecycle moves subscriptions through time and calls billing,
/// which never calls back; no two services use each other, directly or through others.
#[test]
fn services_depend_on_each_other_one_way_only() {
    let graph = service_graph();
    assert!(graph.len() >= 10, "expected the service modules: {graph:?}");
    assert!(graph["lifecycle"].contains("billing"), "{graph:?}");
    assert!(graph["subscriptions"].contains("lifecycle"), "{graph:?}");
    for below in ["billing", "revenue"] {
        for above in ["subscriptions", "lifecycle", "payments"] {
            assert!(
                !graph[below].contains(above),
                "{below} calls back up into {above}: {graph:?}"
            );
        }
    }
    // Depth-first search for a cycle.
    fn visit(
        m: &str,
        graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(i) = path.iter().position(|p| p == m) {
            panic!("services form a cycle: {} -> {m}", path[i..].join(" -> "));
        }
        path.push(m.to_owned());
        for next in &graph[m] {
            visit(next, graph, path, done);
        }
        path.pop();
        done.insert(m.to_owned());
    }
    let mut done = std::collections::BTreeSet::new();
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new(), &mut done);
    }
}
