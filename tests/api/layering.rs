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
