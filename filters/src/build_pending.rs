//! TEMPORARY: `BuildFilter` for the filters whose modules are being split; moves next to each
//! filter once the split lands.

use crate::build::{BuildContext, BuildFilter};

impl BuildFilter for crate::jwt::Jwt {
    const TYPE: &'static str = "jwt";
    type Config = crate::jwt::JwtConfig;

    fn build(cfg: &Self::Config, _bctx: &mut BuildContext) -> Result<Self, String> {
        crate::jwt::Jwt::build(cfg)
    }
}

impl BuildFilter for crate::mcp::Mcp {
    const TYPE: &'static str = "mcp";
    type Config = crate::mcp::McpConfig;

    fn build(cfg: &Self::Config, _bctx: &mut BuildContext) -> Result<Self, String> {
        crate::mcp::Mcp::build(cfg)
    }

    fn watched_dirs(cfg: &Self::Config) -> Vec<std::path::PathBuf> {
        cfg.tools_dir
            .iter()
            .map(|d| std::fs::canonicalize(d).unwrap_or_else(|_| std::path::PathBuf::from(d)))
            .collect()
    }
}
