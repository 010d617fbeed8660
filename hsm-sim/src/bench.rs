pub async fn run(_records: usize) -> anyhow::Result<()> {
    Ok(())
}
