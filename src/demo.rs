//! demo
pub async fn run(_args: crate::config::DemoArgs) -> crate::Result<()> { Ok(()) }
