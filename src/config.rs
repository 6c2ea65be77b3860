//! Configuration: the TOML file (raw, every field optional) resolved with environment
//! overrides and defaults into one validated `Config`.
