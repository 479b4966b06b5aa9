//! `cargo run --release --example domain_vs_token_shift`: in-distribution, token shift and domain
//! shift vs representation geometry, 20 seeds; writes figures/domain_vs_token_shift.{png,svg,csv}.

fn main() -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    let data =
        rmflow::figures::domain_vs_token_shift(&rmflow::config::Config::embedded_default(), 20)?;
    rmflow::figures::write(
        &data,
        std::path::Path::new("figures"),
        "domain_vs_token_shift",
    )?;
    eprintln!(
        "figures/domain_vs_token_shift.{{png,svg,csv}} in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
