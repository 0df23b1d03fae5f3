//! percore-load: the bundled load generator (built under its own issue).

fn main() -> anyhow::Result<()> {
    anyhow::bail!("percore-load is not built yet")
}
