//! The compute floor under every candle stage: CPU kernels that avoid candle's per-op
//! copies on hot paths ([`cpu`], [`nhwc`]), the one `--device` choice ([`device`]) and the
//! process set-up every stage binary starts with ([`runtime`]). Kept apart from the
//! `artifacts` contract so that readers of artifacts (xtask, tools) need no candle.

pub mod cpu;
pub mod device;
pub mod nhwc;
pub mod runtime;
pub mod stats;
