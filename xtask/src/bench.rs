pub async fn run(_: &[String]) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("todo")
}
