//! Plan-file validation: the shipped catalogue, and one test per rule with its message.

use super::*;

fn meters() -> MeterCatalog {
    MeterCatalog::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("pricing-plans")).unwrap()
}

const VALID: &str = r#"
name = "Team"
currency = "USD"
interval = "month"
base_fee = "49.00"

[seats]
unit_amount = "12"
included = 3
max = 50

[[charges]]
meter = "api_calls"
model = "graduated"
tiers = [{ up_to = "10000", unit_amount = "0" }, { up_to = "inf", unit_amount = "0.002", flat_amount = "0" }]
"#;

fn errors(text: &str) -> Vec<String> {
    parse_plan_file(Path::new("pricing-plans/team/v9.toml"), text, &meters())
        .unwrap_err()
        .into_iter()
        .map(|e| e.to_string())
        .collect()
}

fn has(errs: &[String], needle: &str) -> bool {
    errs.iter().any(|e| e.contains(needle))
}

#[test]
fn the_shipped_catalogue_is_valid_and_realistic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pricing-plans");
    let cat = PlanCatalog::load(&dir, &meters()).unwrap();
    let free = cat.latest("free").unwrap();
    assert!(free.base_fee.is_zero());
    assert!(free.limits.values().all(|l| l.mode == LimitMode::Hard));
    assert_eq!(
        cat.latest("team").unwrap().version,
        2,
        "team has two versions"
    );
    assert!(cat.get(&"team@1".parse().unwrap()).is_some());
    assert_eq!(
        cat.latest("business_annual").unwrap().interval,
        Interval::Year
    );
    assert!(!cat.latest("enterprise").unwrap().self_serve);
    assert!(cat.latest("team").unwrap().seats.as_ref().unwrap().included > 0);
}

#[test]
fn a_valid_file_parses_with_its_identity_from_the_path() {
    let v = parse_plan_file(Path::new("x/team/v9.toml"), VALID, &meters()).unwrap();
    assert_eq!((v.plan.as_str(), v.version), ("team", 9));
    assert_eq!(v.base_fee.to_string(), "49.00");
    assert_eq!(v.seats.unwrap().min, 1);
}

#[test]
fn tiers_must_increase() {
    let e = errors(&VALID.replace(
        r#"{ up_to = "10000", unit_amount = "0" }, "#,
        r#"{ up_to = "10000", unit_amount = "0" }, { up_to = "500", unit_amount = "1" }, "#,
    ));
    assert!(
        has(&e, "pricing-plans/team/v9.toml: charges[0].tiers[1].up_to: tiers must increase: 500 does not exceed the previous bound 10000"),
        "{e:?}"
    );
}

#[test]
fn the_last_tier_must_be_open_ended_and_only_the_last() {
    let e = errors(&VALID.replace(r#"up_to = "inf""#, r#"up_to = "20000""#));
    assert!(
        has(
            &e,
            "charges[0].tiers[1].up_to: the last tier must be open-ended"
        ),
        "{e:?}"
    );
    let e = errors(&VALID.replace(r#"up_to = "10000""#, r#"up_to = "inf""#));
    assert!(
        has(
            &e,
            "charges[0].tiers[0].up_to: only the last tier may be open-ended"
        ),
        "{e:?}"
    );
}

#[test]
fn unknown_meters_models_and_fields_are_named() {
    let e = errors(&VALID.replace(r#"meter = "api_calls""#, r#"meter = "api_callz""#));
    assert!(
        has(&e, "charges[0].meter: unknown meter `api_callz`"),
        "{e:?}"
    );
    let e = errors(&VALID.replace(r#"model = "graduated""#, r#"model = "stairstep""#));
    assert!(
        has(&e, "charges[0].model: unknown model `stairstep`"),
        "{e:?}"
    );
    let e = errors(&format!("colour = \"red\"\n{VALID}"));
    assert!(has(&e, "colour: unknown field"), "{e:?}");
}

#[test]
fn negative_prices_floats_and_unknown_currencies_are_refused() {
    let e = errors(&VALID.replace(r#"base_fee = "49.00""#, r#"base_fee = "-1""#));
    assert!(has(&e, "base_fee: must not be negative"), "{e:?}");
    let e = errors(&VALID.replace(r#"base_fee = "49.00""#, "base_fee = 49.5"));
    assert!(
        has(&e, "base_fee: write decimal values as strings"),
        "{e:?}"
    );
    let e = errors(&VALID.replace(r#"currency = "USD""#, r#"currency = "DOGE""#));
    assert!(
        has(&e, "currency: `DOGE` is not a known ISO 4217 currency code"),
        "{e:?}"
    );
    let e = errors(&VALID.replace(r#"unit_amount = "0.002""#, r#"unit_amount = "-0.002""#));
    assert!(
        has(&e, "charges[0].tiers[1].unit_amount: must not be negative"),
        "{e:?}"
    );
}

#[test]
fn seats_interval_and_required_fields() {
    let e = errors(&VALID.replace("max = 50", "max = 50\nmin = 60"));
    assert!(has(&e, "seats.min: must not exceed seats.max"), "{e:?}");
    let e = errors(&VALID.replace(r#"interval = "month""#, r#"interval = "week""#));
    assert!(has(&e, "interval: must be \"month\" or \"year\""), "{e:?}");
    let e = errors(&VALID.replace(r#"name = "Team""#, ""));
    assert!(has(&e, "name: is required"), "{e:?}");
    let e = errors("name = ");
    assert!(has(&e, "(syntax): not valid TOML"), "{e:?}");
}

#[test]
fn all_problems_of_a_file_are_reported_at_once() {
    let bad = VALID
        .replace(r#"currency = "USD""#, r#"currency = "XYZ""#)
        .replace(r#"base_fee = "49.00""#, r#"base_fee = "-5""#);
    assert_eq!(errors(&bad).len(), 2);
}

#[test]
fn a_fallback_must_name_a_plan_in_the_catalogue() {
    let dir = std::env::temp_dir().join(format!("accrue-plans-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("team")).unwrap();
    std::fs::write(
        dir.join("team/v1.toml"),
        format!("fallback = \"gratis\"\n{VALID}"),
    )
    .unwrap();
    let e = PlanCatalog::load(&dir, &meters()).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].field, "fallback");
    assert!(e[0].rule.contains("`gratis`"));
}

#[test]
fn content_hashes_ignore_comments_and_change_with_meaning() {
    let a = parse_plan_file(Path::new("x/team/v1.toml"), VALID, &meters()).unwrap();
    let b = parse_plan_file(
        Path::new("x/team/v1.toml"),
        &format!("# note\n{VALID}"),
        &meters(),
    )
    .unwrap();
    let c = parse_plan_file(
        Path::new("x/team/v1.toml"),
        &VALID.replace(r#""49.00""#, r#""49.01""#),
        &meters(),
    )
    .unwrap();
    assert_eq!(content_hash(&a), content_hash(&b));
    assert_ne!(content_hash(&a), content_hash(&c));
}

/// The database keeps each published version as JSON and the servers run what they read back
/// from it: every shipped version must come back identical, field by field.
#[test]
fn every_shipped_version_reads_back_from_its_published_json_unchanged() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pricing-plans");
    let catalog = PlanCatalog::load(&dir, &meters()).unwrap();
    let mut n = 0;
    for v in catalog.all() {
        let json = serde_json::to_value(v).unwrap();
        let back: PlanVersion = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(&back, v, "{}", v.plan_ref());
        assert_eq!(serde_json::to_value(&back).unwrap(), json);
        assert_eq!(content_hash(&back), content_hash(v));
        n += 1;
    }
    assert!(n >= 7, "only {n} versions");
}

/// A published version and its file are compared by value: a number written another way is
/// the same version (`"49.00"` and `"49.0"`), another number is not.
#[test]
fn versions_are_equal_by_value_not_by_how_numbers_are_written() {
    let a = parse_plan_file(Path::new("pricing-plans/team/v9.toml"), VALID, &meters()).unwrap();
    let same = VALID.replace(r#"base_fee = "49.00""#, r#"base_fee = "49.0""#);
    let b = parse_plan_file(Path::new("pricing-plans/team/v9.toml"), &same, &meters()).unwrap();
    assert_eq!(a, b);
    let other = VALID.replace(r#"base_fee = "49.00""#, r#"base_fee = "49.01""#);
    let c = parse_plan_file(Path::new("pricing-plans/team/v9.toml"), &other, &meters()).unwrap();
    assert_ne!(a, c);
}
