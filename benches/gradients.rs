//! One loss-gradient evaluation of each model: EX-RM, IM-RM full (log-softmax over V) and IM-RM
//! sparse (cancelled form), at the default size and at V = 32768, D = 256, N = 2000.
//! `cargo bench --bench gradients`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rmflow::config::{Config, GradientPath};
use rmflow::problem::reward::{loss_and_gradient, ExplicitRm, ImplicitRm, MarginModel};
use rmflow::problem::synthetic::Setup;
use std::hint::black_box;

fn sized(v: usize, d: usize, n: usize) -> Config {
    let mut c = Config::embedded_default();
    c.setup.dim = d;
    c.setup.filler_tokens = v - 32;
    c.setup.train_pairs = n;
    c.setup.eval_pairs = 10;
    c
}

fn gradients(c: &mut Criterion) {
    let mut group = c.benchmark_group("gradient");
    group.sample_size(10);
    for (label, config) in [
        ("V1024_D32_N200", Config::embedded_default()),
        ("V32768_D256_N2000", sized(32768, 256, 2000)),
    ] {
        let setup = Setup::generate(&config);
        let u0: Vec<f64> = setup.unembedding_init.full().iter().copied().collect();
        let models: [(&str, Box<dyn MarginModel>, Vec<f64>); 3] = [
            (
                "exrm",
                Box::new(ExplicitRm::new(&setup.train)),
                setup.head_init.to_vec(),
            ),
            (
                "imrm_full",
                Box::new(ImplicitRm::new(
                    &setup.train,
                    setup.unembedding_init.full().view(),
                    1.0,
                    GradientPath::Full,
                )),
                u0.clone(),
            ),
            (
                "imrm_sparse",
                Box::new(ImplicitRm::new(
                    &setup.train,
                    setup.unembedding_init.full().view(),
                    1.0,
                    GradientPath::SeenRows,
                )),
                u0,
            ),
        ];
        for (name, model, theta) in &models {
            let mut grad = vec![0.0; theta.len()];
            group.bench_with_input(BenchmarkId::new(*name, label), theta, |b, theta| {
                b.iter(|| loss_and_gradient(model.as_ref(), black_box(theta), &mut grad))
            });
        }
    }
    group.finish();
}

fn pipeline(c: &mut Criterion) {
    let mut group = c.benchmark_group("pipeline");
    group.sample_size(10);
    for t_max in [1e8, 1e100] {
        let mut config = Config::embedded_default();
        config.train.t_max = t_max;
        group.bench_function(format!("simulate_default_t{t_max:e}"), |b| {
            b.iter(|| {
                rmflow::experiment::simulation::simulate(black_box(&config), &mut |_| {}).unwrap()
            })
        });
    }
    let config = Config::embedded_default();
    group.bench_function("verify_default", |b| {
        b.iter(|| {
            rmflow::analysis::verify::verify_setup(
                black_box(&config),
                &rmflow::analysis::verify::VerifyOptions::default(),
                &|_| {},
            )
            .unwrap()
        })
    });
    group.finish();
}

/// All ρ_{k,l} for 100 evaluation × 200 training pairs, K = 8, V = 1000, D = 64 (one softmax per
/// prefix, inner products through the expanded formula), plus the velocity decomposition.
fn rho(c: &mut Criterion) {
    let mut config = Config::embedded_default();
    config.setup.dim = 64;
    config.setup.filler_tokens = 1000 - 32;
    config.setup.response_length = 8;
    config.setup.train_pairs = 200;
    config.setup.eval_pairs = 100;
    config.train.imrm_gradient = GradientPath::Full;
    let setup = Setup::generate(&config);
    let side = rmflow::analysis::dynamics::TrainingSide::new(&setup.train);
    let train = &side.prefixes;
    let eval = rmflow::analysis::dynamics::ResponsePrefixes::new(&setup.evals[0]);
    let u0 = setup.unembedding_init.full();
    let u = u0.view();
    let mut group = c.benchmark_group("rho");
    group.sample_size(10);
    group.bench_function("token_overlap_K8_V1000_D64_100x200", |b| {
        b.iter(|| rmflow::analysis::dynamics::token_overlap(black_box(u), &eval, train))
    });
    let c_im = vec![1.0 / 200.0; 200];
    let c_ex = c_im.clone();
    group.bench_function("split_dynamics_K8_V1000_D64_100x200", |b| {
        b.iter(|| {
            rmflow::analysis::dynamics::split_dynamics(
                black_box(u),
                &setup.evals[0],
                &eval,
                &side,
                &c_im,
                &c_ex,
                1.0,
            )
        })
    });
    group.finish();
}

criterion_group!(benches, gradients, pipeline, rho);
criterion_main!(benches);
