//! Rating throughput: `cargo bench --bench rating`. Lines rated per second = elements/s.

use accrue::catalog::meters::MeterCatalog;
use accrue::catalog::plans::PlanCatalog;
use accrue::domain::rating::{charge_amount, rate_period};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::path::Path;

fn catalogue() -> PlanCatalog {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pricing-plans");
    PlanCatalog::load(&dir, &MeterCatalog::load(&dir).unwrap()).unwrap()
}

fn bench(c: &mut Criterion) {
    let cat = catalogue();
    let team = cat.get(&"team@2".parse().unwrap()).unwrap().clone();
    let business = cat.latest("business").unwrap().clone();
    let usage = BTreeMap::from([
        ("api_calls".to_owned(), Decimal::from(2_345_678)),
        ("storage_gb".to_owned(), Decimal::new(6_125, 1)),
        ("compute_minutes".to_owned(), Decimal::new(123_456, 2)),
    ]);
    let lines = rate_period(&team, &usage, 8).lines.len() as u64;

    let mut g = c.benchmark_group("rating");
    g.throughput(Throughput::Elements(lines));
    g.bench_function("team@2 period (5 lines)", |b| {
        b.iter(|| rate_period(black_box(&team), black_box(&usage), black_box(8)))
    });
    let lines = rate_period(&business, &usage, 40).lines.len() as u64;
    g.throughput(Throughput::Elements(lines));
    g.bench_function("business@1 period (5 lines)", |b| {
        b.iter(|| rate_period(black_box(&business), black_box(&usage), black_box(40)))
    });
    g.throughput(Throughput::Elements(1));
    let model = &team.charges[0].model;
    g.bench_function("graduated charge, 3 tiers", |b| {
        b.iter(|| charge_amount(black_box(model), black_box(Decimal::from(2_345_678))))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
