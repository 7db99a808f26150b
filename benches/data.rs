//! `cargo bench --bench data`: the data-path figures (augmentation throughput on 256×3×32×32,
//! Fashion-MNIST load time and peak RSS). The same report is `tesla_distill::data::bench`.

fn main() -> anyhow::Result<()> {
    print!("{}", tesla_distill::data::bench::bench_data()?);
    Ok(())
}
